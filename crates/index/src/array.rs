//! Arrays that are either owned in memory or memory-mapped from an index file.

use bytemuck::Pod;
use memmap2::Mmap;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

/// A read-only slice of `T` backed by a `Vec` or by a memory map; becomes owned when mutated.
pub(crate) enum Array<T: Pod> {
    /// Elements in memory.
    Owned(Vec<T>),
    /// Elements in a page-aligned memory map of exactly `len` elements.
    Mapped {
        map: Arc<Mmap>,
        len: usize,
        _t: PhantomData<T>,
    },
}

impl<T: Pod> Array<T> {
    /// A mapped array over the first `len` elements of `map` (page aligned, so the cast is valid).
    pub fn mapped(map: Arc<Mmap>, len: usize) -> Self {
        Array::Mapped {
            map,
            len,
            _t: PhantomData,
        }
    }

    /// The elements as a growable vector, copying a mapped array into memory first.
    pub fn make_mut(&mut self) -> &mut Vec<T> {
        if let Array::Mapped { .. } = self {
            *self = Array::Owned(self.deref().to_vec());
        }
        match self {
            Array::Owned(v) => v,
            Array::Mapped { .. } => unreachable!("converted to owned above"),
        }
    }
}

impl<T: Pod> Default for Array<T> {
    fn default() -> Self {
        Array::Owned(Vec::new())
    }
}

impl<T: Pod> Deref for Array<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Array::Owned(v) => v,
            Array::Mapped { map, len, .. } => {
                bytemuck::cast_slice(&map[..len * std::mem::size_of::<T>()])
            }
        }
    }
}

impl<T: Pod> From<Vec<T>> for Array<T> {
    fn from(v: Vec<T>) -> Self {
        Array::Owned(v)
    }
}
