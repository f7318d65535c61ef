//! Element types of collectives and their reductions.

use std::fmt;

/// How a reducing collective combines the members' elements.
///
/// Integer `Sum` and `Prod` wrap on overflow (as MPI's do); `Avg` is the sum divided by the
/// number of members (an integer division for integer types). Float `Min`/`Max` ignore a NaN
/// operand when the other is a number (as `f32::min` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// The sum of the members' elements.
    Sum,
    /// The product.
    Prod,
    /// The minimum.
    Min,
    /// The maximum.
    Max,
    /// The mean: the sum divided by the group's size.
    Avg,
}

impl ReduceOp {
    pub(crate) fn code(self) -> u8 {
        match self {
            ReduceOp::Sum => 1,
            ReduceOp::Prod => 2,
            ReduceOp::Min => 3,
            ReduceOp::Max => 4,
            ReduceOp::Avg => 5,
        }
    }

    pub(crate) fn name_of(code: u8) -> &'static str {
        match code {
            1 => "sum",
            2 => "prod",
            3 => "min",
            4 => "max",
            5 => "avg",
            _ => "-",
        }
    }
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ReduceOp::name_of(self.code()))
    }
}

mod sealed {
    pub trait Sealed {}
}

/// An element type of collectives: `f32 f64 half::f16 half::bf16 i32 i64 u8`.
///
/// Sealed; its items are the runtime's.
pub trait Element: Copy + Send + Sync + 'static + bytemuck::Pod + sealed::Sealed {
    /// A code naming the type in collective headers (so mismatched types are detected).
    #[doc(hidden)]
    const DTYPE: u8;
    /// The type's name in messages and tables.
    #[doc(hidden)]
    const NAME: &'static str;
    /// `dst[i] = dst[i] op src[i]` for every `i` (`Avg` sums).
    #[doc(hidden)]
    fn reduce_slice(op: ReduceOp, dst: &mut [Self], src: &[Self]);
    /// `x / n` (the final step of `Avg`).
    #[doc(hidden)]
    fn divide(x: Self, n: usize) -> Self;
}

macro_rules! float_element {
    ($t:ty, $code:expr, $name:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: u8 = $code;
            const NAME: &'static str = $name;
            fn reduce_slice(op: ReduceOp, dst: &mut [Self], src: &[Self]) {
                let pairs = dst.iter_mut().zip(src);
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => pairs.for_each(|(d, s)| *d += *s),
                    ReduceOp::Prod => pairs.for_each(|(d, s)| *d *= *s),
                    ReduceOp::Min => pairs.for_each(|(d, s)| *d = d.min(*s)),
                    ReduceOp::Max => pairs.for_each(|(d, s)| *d = d.max(*s)),
                }
            }
            fn divide(x: Self, n: usize) -> Self {
                x / n as $t
            }
        }
    };
}
float_element!(f32, 1, "float");
float_element!(f64, 2, "double");

macro_rules! half_element {
    ($t:ty, $code:expr, $name:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: u8 = $code;
            const NAME: &'static str = $name;
            fn reduce_slice(op: ReduceOp, dst: &mut [Self], src: &[Self]) {
                let pairs = dst.iter_mut().zip(src);
                // Each step in f32, rounded back (what a reduction in the type itself means).
                let f = |d: &mut $t, s: &$t, g: fn(f32, f32) -> f32| {
                    *d = <$t>::from_f32(g(d.to_f32(), s.to_f32()))
                };
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => pairs.for_each(|(d, s)| f(d, s, |a, b| a + b)),
                    ReduceOp::Prod => pairs.for_each(|(d, s)| f(d, s, |a, b| a * b)),
                    ReduceOp::Min => pairs.for_each(|(d, s)| f(d, s, f32::min)),
                    ReduceOp::Max => pairs.for_each(|(d, s)| f(d, s, f32::max)),
                }
            }
            fn divide(x: Self, n: usize) -> Self {
                <$t>::from_f32(x.to_f32() / n as f32)
            }
        }
    };
}
half_element!(half::f16, 3, "half");
half_element!(half::bf16, 4, "bfloat16");

macro_rules! int_element {
    ($t:ty, $code:expr, $name:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: u8 = $code;
            const NAME: &'static str = $name;
            fn reduce_slice(op: ReduceOp, dst: &mut [Self], src: &[Self]) {
                let pairs = dst.iter_mut().zip(src);
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => {
                        pairs.for_each(|(d, s)| *d = d.wrapping_add(*s))
                    }
                    ReduceOp::Prod => pairs.for_each(|(d, s)| *d = d.wrapping_mul(*s)),
                    ReduceOp::Min => pairs.for_each(|(d, s)| *d = (*d).min(*s)),
                    ReduceOp::Max => pairs.for_each(|(d, s)| *d = (*d).max(*s)),
                }
            }
            fn divide(x: Self, n: usize) -> Self {
                // A group's size fits every integer type's range in practice; saturate if not.
                x / <$t>::try_from(n).unwrap_or(<$t>::MAX)
            }
        }
    };
}
int_element!(i32, 5, "int32");
int_element!(i64, 6, "int64");
int_element!(u8, 7, "uint8");

/// The name of the element type with code `code`.
pub(crate) fn dtype_name(code: u8) -> &'static str {
    match code {
        1 => f32::NAME,
        2 => f64::NAME,
        3 => half::f16::NAME,
        4 => half::bf16::NAME,
        5 => i32::NAME,
        6 => i64::NAME,
        7 => u8::NAME,
        _ => "-",
    }
}

/// A type-erased reduction of byte slices holding elements of one type.
#[derive(Clone, Copy)]
pub(crate) struct Reducer {
    pub(crate) op: ReduceOp,
    pub(crate) elem: usize,
    f: fn(ReduceOp, &mut [u8], &[u8]),
}

impl fmt::Debug for Reducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reducer")
            .field("op", &self.op)
            .field("elem", &self.elem)
            .finish()
    }
}

impl Reducer {
    pub(crate) fn of<T: Element>(op: ReduceOp) -> Self {
        Reducer {
            op,
            elem: size_of::<T>(),
            f: reduce_bytes::<T>,
        }
    }

    /// `dst = dst op src`, element-wise; both hold whole elements, `src` at least as many.
    pub(crate) fn apply(&self, dst: &mut [u8], src: &[u8]) {
        (self.f)(self.op, dst, &src[..dst.len()]);
    }

    /// `dst` = the first of `srcs`, then `dst op src` for each of the others, in order.
    pub(crate) fn fold<'a>(&self, dst: &mut [u8], mut srcs: impl Iterator<Item = &'a [u8]>) {
        if let Some(first) = srcs.next() {
            dst.copy_from_slice(&first[..dst.len()]);
        }
        for src in srcs {
            self.apply(dst, src);
        }
    }
}

fn reduce_bytes<T: Element>(op: ReduceOp, dst: &mut [u8], src: &[u8]) {
    let aligned = |p: *const u8| (p as usize).is_multiple_of(align_of::<T>());
    if aligned(dst.as_ptr()) && aligned(src.as_ptr()) {
        T::reduce_slice(op, bytemuck::cast_slice_mut(dst), bytemuck::cast_slice(src));
        return;
    }
    // Unaligned (never for the runtime's own buffers, which are aligned): element by element.
    let size = size_of::<T>();
    for (d, s) in dst.chunks_exact_mut(size).zip(src.chunks_exact(size)) {
        let mut x = [bytemuck::pod_read_unaligned::<T>(d)];
        T::reduce_slice(op, &mut x, &[bytemuck::pod_read_unaligned::<T>(s)]);
        d.copy_from_slice(bytemuck::bytes_of(&x[0]));
    }
}
