//! How a value crosses a switch: the one word that travels in a register.
//!
//! A value of a primitive scalar type (the integers, `f32`, `f64`, `bool`,
//! `char`) or of a zero-sized type travels in the word itself, so a switch
//! that hands over a `u64` touches no memory for it. Any other value stays
//! in the sender's frame and the word is its address; the receiver moves it
//! out before the sender runs again, and the sender never drops it (it is
//! held in a `ManuallyDrop`).
//!
//! Why a list of types rather than "anything that fits": a type's padding
//! bytes (and the payload of `Option<u32>::None`) are uninitialized, and
//! reading them as an integer is undefined behaviour. The listed types have
//! none; the test is on `TypeId`, which the compiler folds to a constant, so
//! each monomorphized switch compiles to exactly one of the two paths.

use std::any::TypeId;
use std::mem::{size_of, ManuallyDrop};
use std::ptr;

/// Whether a `T` travels in the word itself.
#[inline(always)]
pub(crate) fn by_value<T: 'static>() -> bool {
    if size_of::<T>() == 0 {
        return true;
    }
    if size_of::<T>() > size_of::<usize>() {
        return false;
    }
    let t = TypeId::of::<T>();
    // Every type here is at most a word and has no padding or other
    // uninitialized bytes: any value of it is fully initialized.
    [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i8>(),
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<isize>(),
        TypeId::of::<f32>(),
        TypeId::of::<f64>(),
        TypeId::of::<bool>(),
        TypeId::of::<char>(),
    ]
    .contains(&t)
}

/// The word for `value`: the value itself if [`by_value`], else its address.
///
/// The caller keeps `value` where it is, unread and undropped, until the
/// receiver has [`decode`]d the word.
#[inline(always)]
pub(crate) fn encode<T: 'static>(value: &ManuallyDrop<T>) -> usize {
    if by_value::<T>() {
        let mut word = 0usize;
        // The T is copied bit for bit; it is moved out exactly once, by the
        // receiver's decode (the original is ManuallyDrop, never used again).
        // SAFETY: by_value::<T>() means T fits in a usize and has no
        // uninitialized bytes, so the word is fully initialized after this.
        unsafe { ptr::write_unaligned((&raw mut word).cast::<T>(), ptr::read(&**value)) };
        word
    } else {
        &**value as *const T as usize
    }
}

/// The `T` a word from [`encode`] carries, moved out of it.
///
/// # Safety
/// `word` must come from `encode::<T>` of a value that is still where it
/// was encoded (for a value passed by address) and that nobody else moves
/// out or drops.
#[inline(always)]
pub(crate) unsafe fn decode<T: 'static>(word: usize) -> T {
    if by_value::<T>() {
        // SAFETY: encode wrote a valid T into the low bytes of `word`.
        unsafe { ptr::read_unaligned((&raw const word).cast::<T>()) }
    } else {
        // SAFETY: the caller's contract: `word` is the address of a live T
        // that is ours to move out.
        unsafe { ptr::read(word as *const T) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: 'static + Clone + PartialEq + std::fmt::Debug>(v: T) {
        let held = ManuallyDrop::new(v.clone());
        let word = encode(&held);
        // SAFETY: `held` stays alive and is not dropped.
        let back: T = unsafe { decode(word) };
        assert_eq!(back, v);
    }

    #[test]
    fn primitive_scalars_travel_in_the_word() {
        assert!(by_value::<u64>() && by_value::<i8>() && by_value::<char>());
        assert!(by_value::<f64>() && by_value::<bool>() && by_value::<()>());
        let held = ManuallyDrop::new(0x1234_5678_u32);
        assert_eq!(encode(&held), 0x1234_5678);
        round_trip(u64::MAX);
        round_trip(-3i16);
        round_trip('\u{1F600}');
        round_trip(f64::NAN.to_bits());
        round_trip(true);
        round_trip(());
    }

    #[test]
    fn anything_else_travels_by_address() {
        // Padding or uninitialized payload bytes: by address even though
        // they fit in a word.
        assert!(!by_value::<(u8, u16)>());
        assert!(!by_value::<Option<u32>>());
        assert!(!by_value::<Box<u8>>());
        assert!(!by_value::<u128>());
        let held = ManuallyDrop::new(Some(7u32));
        assert_eq!(encode(&held), &*held as *const Option<u32> as usize);
        round_trip(None::<u32>);
        round_trip(String::from("moved, not copied twice"));
        round_trip([1u64; 9]);
    }
}
