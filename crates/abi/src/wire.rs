//! Little-endian fixed-layout encoding helpers shared by every wire struct.
//!
//! Decoding never panics: every read is bounds-checked and a short buffer is
//! reported as [`WireError::Short`].

use thiserror::Error;

/// Why a byte buffer could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The buffer is shorter than the structure it should hold.
    #[error("{what}: need {need} bytes, got {got}")]
    Short {
        /// The structure or payload being decoded.
        what: &'static str,
        /// Bytes needed, counted from the start of the buffer.
        need: usize,
        /// Bytes the buffer has.
        got: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("{what}: invalid value {value}")]
    Invalid {
        /// The field that holds it.
        what: &'static str,
        /// The value found, widened to u64.
        value: u64,
    },
    /// A JSON document could not be parsed or has the wrong shape.
    #[error("invalid JSON: {0}")]
    Json(String),
}

/// An integer type that can appear in a packed little-endian wire struct.
pub trait WireInt: Copy + Default {
    /// Encoded width in bytes.
    const SIZE: usize;
    /// Appends the little-endian encoding.
    fn put(self, out: &mut Vec<u8>);
    /// Reads from the first `SIZE` bytes of `b`; `b` must be long enough.
    fn get(b: &[u8]) -> Self;
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl WireInt for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(&b[..Self::SIZE]);
                <$t>::from_le_bytes(a)
            }
        }
    )*};
}
wire_int!(u8, u16, u32, u64, i32);

/// Declares a packed little-endian wire struct with `SIZE`, `encode`,
/// `to_bytes`, `decode` and a field offset table (for layout tests).
///
/// Fields are encoded in declaration order with no padding; every field
/// type must implement [`WireInt`]. Attributes on the struct and on each
/// field, doc comments included, are kept on the generated items, so
/// document each field at the call site (`missing_docs` applies):
///
/// ```
/// vfio_migrate_abi::wire_struct! {
///     /// A two-field example.
///     pub struct Pair {
///         /// Size of the whole message in bytes.
///         pub argsz: u32,
///         /// The value carried.
///         pub value: u64,
///     }
/// }
/// assert_eq!(Pair::SIZE, 12);
/// let p = Pair { argsz: 12, value: 7 };
/// assert_eq!(Pair::decode(&p.to_bytes()), Ok(p));
/// ```
#[macro_export]
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }

        impl $name {
            /// Encoded size in bytes (packed).
            pub const SIZE: usize = 0 $( + <$ty as $crate::wire::WireInt>::SIZE )*;

            /// Appends the packed little-endian encoding to `out`.
            pub fn encode(&self, out: &mut Vec<u8>) {
                $( $crate::wire::WireInt::put(self.$field, out); )*
            }

            /// The packed little-endian encoding.
            pub fn to_bytes(&self) -> Vec<u8> {
                let mut v = Vec::with_capacity(Self::SIZE);
                self.encode(&mut v);
                v
            }

            /// Decodes from the start of `buf` (extra bytes are ignored).
            #[allow(unused_assignments)]
            pub fn decode(buf: &[u8]) -> Result<Self, $crate::wire::WireError> {
                if buf.len() < Self::SIZE {
                    return Err($crate::wire::WireError::Short {
                        what: stringify!($name),
                        need: Self::SIZE,
                        got: buf.len(),
                    });
                }
                #[allow(unused_mut, unused_variables, unused_assignments)]
                let mut at = 0usize;
                $(
                    let $field = <$ty as $crate::wire::WireInt>::get(&buf[at..]);
                    at += <$ty as $crate::wire::WireInt>::SIZE;
                )*
                Ok(Self { $($field),* })
            }

            /// `(name, offset, width)` of every field, in order.
            #[allow(unused_assignments)]
            pub fn fields() -> Vec<(&'static str, usize, usize)> {
                #[allow(unused_mut)]
                let mut v = Vec::new();
                #[allow(unused_mut, unused_assignments)]
                let mut at = 0usize;
                $(
                    v.push((stringify!($field), at, <$ty as $crate::wire::WireInt>::SIZE));
                    at += <$ty as $crate::wire::WireInt>::SIZE;
                )*
                v
            }
        }
    };
}

/// Bounds-checked cursor over a received payload.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader named `what` (used in error messages).
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }
    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// The unconsumed tail.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
    /// Takes `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Short {
                what: self.what,
                need: self.pos.saturating_add(n),
                got: self.buf.len(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    /// Reads one integer.
    pub fn int<T: WireInt>(&mut self) -> Result<T, WireError> {
        Ok(T::get(self.take(T::SIZE)?))
    }
}
