//! Matrix views over row-major f32 buffers, and the one place that calls the GEMM.
//!
//! Activations of the CPU training path live in plain row-major buffers; a head of q, a tile
//! of keys or a transposed weight is a view (start, shape, leading dimension, transposed or
//! not) into one of them, so no operand is ever copied to change its layout. Bounds are
//! checked here, once, before the unsafe call.

use gemm::Parallelism;

/// A (rows, cols) matrix stored row-major in `data` with row stride `ld`, read as itself or,
/// with `t`, as its transpose.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub t: bool,
}

impl<'a> Mat<'a> {
    /// A dense (rows, cols) matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, ld: cols, t: false }
    }

    /// `cols` columns starting at column `c0` of a (rows, ld) matrix.
    pub fn cols_of(data: &'a [f32], rows: usize, ld: usize, c0: usize, cols: usize) -> Self {
        Self { data: &data[c0.min(data.len())..], rows, cols, ld, t: false }
    }

    /// Rows `r0..r0 + n` of this (untransposed) view.
    pub fn rows_range(self, r0: usize, n: usize) -> Self {
        Self { data: &self.data[(r0 * self.ld).min(self.data.len())..], rows: n, ..self }
    }

    pub fn t(self) -> Self {
        Self { t: !self.t, ..self }
    }

    /// Shape as read.
    fn shape(&self) -> (usize, usize) {
        if self.t {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// (row stride, column stride) as read.
    fn strides(&self) -> (isize, isize) {
        if self.t {
            (1, self.ld as isize)
        } else {
            (self.ld as isize, 1)
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.cols <= self.ld && (self.rows - 1) * self.ld + self.cols <= self.data.len())
    }
}

/// `dst (m, n)` with row stride `ld`: `dst = alpha · a b`, or `dst += alpha · a b` when
/// `accumulate`. `threads`: 1 inside an already parallel region, else the pool's size.
#[allow(clippy::too_many_arguments)]
pub fn matmul(dst: &mut [f32], ld: usize, a: Mat, b: Mat, alpha: f32, accumulate: bool, threads: usize) {
    let (m, k) = a.shape();
    let (kb, n) = b.shape();
    assert!(k == kb, "gemm: inner dimensions {k} and {kb} differ");
    assert!(a.fits() && b.fits(), "gemm: operand view outside its buffer");
    assert!(m == 0 || n == 0 || (n <= ld && (m - 1) * ld + n <= dst.len()), "gemm: destination too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * ld..r * ld + n].fill(0.0);
            }
        }
        return;
    }
    let (ars, acs) = a.strides();
    let (brs, bcs) = b.strides();
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: every element the GEMM reads or writes lies inside the slices, checked above
    // from the views' shapes and strides; `dst` is borrowed mutably, so it aliases neither
    // operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            a.data.as_ptr(),
            acs,
            ars,
            b.data.as_ptr(),
            bcs,
            brs,
            if accumulate { 1.0 } else { 0.0 },
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// Threads for a GEMM of this size outside a parallel region: small products are not worth
/// waking the pool for.
pub fn threads_for(m: usize, n: usize, k: usize) -> usize {
    if m * n * k < 1 << 18 {
        1
    } else {
        rayon::current_num_threads()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    /// Transposed views, column windows and accumulation against the textbook triple loop.
    #[test]
    fn views_and_accumulation_match_the_triple_loop() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        // b stored transposed as (n, k).
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut c = vec![1.0; m * n];
        matmul(&mut c, n, Mat::new(&a, m, k), Mat::new(&bt, n, k).t(), 2.0, true, 1);
        for (x, w) in c.iter().zip(&want) {
            assert!((x - (1.0 + 2.0 * w)).abs() < 1e-5);
        }
        // a as columns 2..2+k of a wider (m, k+3) buffer.
        let wide: Vec<f32> = (0..m * (k + 3))
            .map(|i| {
                let (r, c) = (i / (k + 3), i % (k + 3));
                if (2..2 + k).contains(&c) {
                    a[r * k + c - 2]
                } else {
                    9.0
                }
            })
            .collect();
        let mut c = vec![0.0; m * n];
        matmul(&mut c, n, Mat::cols_of(&wide, m, k + 3, 2, k), Mat::new(&b, k, n), 1.0, false, 2);
        for (x, w) in c.iter().zip(&want) {
            assert!((x - w).abs() < 1e-5);
        }
    }
}
