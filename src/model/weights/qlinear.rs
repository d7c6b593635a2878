//! The frozen base projection: `y = x Wᵀ (+ b)` with `W` kept in its quantized
//! form (a GGUF block type or NF4). Forward runs on the quantized kernels;
//! backward returns only `∂L/∂x = ∂L/∂y · W`, dequantizing `W` for that one
//! product and dropping it, so no weight-sized gradient ever exists. candle's
//! own `QMatMul` has no backward and its dense matmul would also compute a
//! gradient for the frozen weight, hence this op.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor};

#[cfg(target_arch = "x86_64")]
use crate::kernels::cpu as qmm_cpu;
use crate::model::error::Result;
use crate::model::weights::nf4::Nf4Tensor;

/// How a frozen (out, in) matrix is held.
pub enum FrozenWeight {
    /// Any GGUF block type (Q4_0 … Q8_0, k-quants), run with candle's quantized kernels.
    Ggml(Arc<QTensor>),
    /// NF4 with double-quantized scales.
    Nf4(Nf4Tensor),
    /// A dense matrix (f32/f16/bf16 tensors found in a GGUF file).
    Dense(Tensor),
}

impl FrozenWeight {
    pub fn dims(&self) -> (usize, usize) {
        match self {
            FrozenWeight::Ggml(q) => q.shape().dims2().unwrap_or((0, 0)),
            FrozenWeight::Nf4(n) => n.dims(),
            FrozenWeight::Dense(t) => t.dims2().unwrap_or((0, 0)),
        }
    }

    pub fn storage_bytes(&self) -> usize {
        match self {
            FrozenWeight::Ggml(q) => q.storage_size_in_bytes(),
            FrozenWeight::Nf4(n) => n.storage_bytes(),
            FrozenWeight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
        }
    }

    /// A short name of the storage type, as GGUF spells it.
    pub fn type_name(&self) -> String {
        match self {
            FrozenWeight::Ggml(q) => format!("{:?}", q.dtype()),
            FrozenWeight::Nf4(_) => "NF4".into(),
            FrozenWeight::Dense(t) => format!("{:?}", t.dtype()),
        }
    }

    /// The dense matrix, on the weight's device, in `dtype`.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(w) = crate::model::weights::cuda_dequant::weight_rows(self, 0..self.dims().0, dtype)? {
            return Ok(w);
        }
        Ok(match self {
            FrozenWeight::Ggml(q) => {
                let dev = q.device();
                if dtype == DType::F16 && dev.is_cuda() {
                    q.dequantize_f16(&dev)?
                } else {
                    q.dequantize(&dev)?.to_dtype(dtype)?
                }
            }
            FrozenWeight::Nf4(n) => n.dequantize(dtype)?,
            FrozenWeight::Dense(t) => t.to_dtype(dtype)?,
        })
    }
}

struct FrozenMatMul(Arc<FrozenWeight>);

/// `x · wᵀ` on storages, for a dense (n, k) weight and a contiguous (…, k) input.
fn dense_fwd<S: BackendStorage>(
    x: &S,
    xl: &Layout,
    w: &S,
    wl: &Layout,
    n: usize,
    k: usize,
) -> candle_core::Result<(S, Shape)> {
    let m = xl.shape().elem_count() / k;
    let lhs = Layout::contiguous_with_offset((m, k), xl.start_offset());
    let rhs = Layout::contiguous_with_offset((n, k), wl.start_offset()).transpose(0, 1)?;
    let out = x.matmul(w, (1, m, n, k), &lhs, &rhs)?;
    let mut dims = xl.shape().dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Ok((out, Shape::from(dims)))
}

impl FrozenMatMul {
    fn dense_weight(&self, dtype: DType) -> candle_core::Result<Tensor> {
        let w = self.0.dequantize(dtype).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        w.contiguous()
    }
}

impl CustomOp1 for FrozenMatMul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if !l.is_contiguous() {
            candle_core::bail!("frozen-matmul: input must be contiguous")
        }
        if let (FrozenWeight::Ggml(q), CpuStorage::F32(xs)) = (self.0.as_ref(), s) {
            // Training and scoring multiply exactly (dequantized slices of W); only
            // generation rounds inputs to 8 bits, through `forward_infer`.
            let (n, k) = self.0.dims();
            let count = l.shape().elem_count();
            let x = Tensor::from_slice(
                &xs[l.start_offset()..l.start_offset() + count],
                (count / k, k),
                &Device::Cpu,
            )?;
            let y = sliced_fwd(q, &x, n, k)?;
            let mut dims = l.shape().dims().to_vec();
            if let Some(last) = dims.last_mut() {
                *last = n;
            }
            return Ok((CpuStorage::F32(y.flatten_all()?.to_vec1()?), Shape::from(dims)));
        }
        if let FrozenWeight::Ggml(q) = self.0.as_ref() {
            return q.as_ref().cpu_fwd(s, l);
        }
        let (n, k) = self.0.dims();
        let w = self.dense_weight(s.dtype())?;
        let (ws, wl) = w.storage_and_layout();
        match &*ws {
            Storage::Cpu(wc) => dense_fwd(s, l, wc, wl, n, k),
            _ => candle_core::bail!("frozen-matmul: weight and input on different devices"),
        }
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        if !l.is_contiguous() {
            candle_core::bail!("frozen-matmul: input must be contiguous")
        }
        if let FrozenWeight::Ggml(q) = self.0.as_ref() {
            return q.as_ref().cuda_fwd(s, l);
        }
        let (n, k) = self.0.dims();
        let w = self.dense_weight(s.dtype())?;
        let (ws, wl) = w.storage_and_layout();
        match &*ws {
            Storage::Cuda(wc) => dense_fwd(s, l, wc, wl, n, k),
            _ => candle_core::bail!("frozen-matmul: weight and input on different devices"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(input_grad(&self.0, grad)?.reshape(arg.shape())?))
    }
}

/// `∂L/∂x (m, k) = ∂L/∂y (…, n) · W` in grad's dtype, never holding more of W densely than one
/// slice where W is large.
fn input_grad(weight: &FrozenWeight, grad: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if grad.device().is_cuda() {
        if let Some(gx) = crate::model::weights::cuda_dequant::input_grad(weight, grad)? {
            return Ok(gx);
        }
    }
    let (n, k) = weight.dims();
    let m = grad.elem_count() / n;
    let g2 = grad.reshape((m, n))?;
    if let FrozenWeight::Ggml(q) = weight {
        if q.device().is_cpu() && n * k > BWD_SLICE_ELEMS {
            return sliced_bwd(q, &g2, n, k);
        }
    }
    let w = weight.dequantize(grad.dtype()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let gx = g2.matmul(&w.contiguous()?)?;
    debug_assert_eq!(gx.dims2()?, (m, k));
    Ok(gx)
}

/// Above this many weights (16 MiB in f32) the backward dequantizes row slices one
/// at a time, so a vocabulary-sized lm_head never exists densely.
pub const BWD_SLICE_ELEMS: usize = 1 << 22;

/// Calls `f(first_row, slice)` for W's rows in slices of at most `BWD_SLICE_ELEMS`
/// weights, each dequantized to f32 on the CPU and dropped after the call.
pub(crate) fn for_each_dense_slice(
    q: &QTensor,
    n: usize,
    k: usize,
    mut f: impl FnMut(usize, Tensor) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let dtype = q.dtype();
    let row_bytes = k / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    let rows = (BWD_SLICE_ELEMS / k).max(1);
    for r0 in (0..n).step_by(rows) {
        let r = rows.min(n - r0);
        let bytes = &data[r0 * row_bytes..(r0 + r) * row_bytes];
        let sub = QTensor::new(QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype)?, (r, k))?;
        f(r0, sub.dequantize(&Device::Cpu)?)?;
    }
    Ok(())
}

/// `x (m, k) · Wᵀ` in f32, one dense slice of W at a time.
fn sliced_fwd(q: &QTensor, x: &Tensor, n: usize, k: usize) -> candle_core::Result<Tensor> {
    let mut parts = Vec::new();
    for_each_dense_slice(q, n, k, |_, w| {
        parts.push(x.matmul(&w.t()?)?);
        Ok(())
    })?;
    Tensor::cat(&parts, 1)
}

/// `grad (m, n) · W (n, k)` as a sum over dense slices of W.
fn sliced_bwd(q: &QTensor, g: &Tensor, n: usize, k: usize) -> candle_core::Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for_each_dense_slice(q, n, k, |r0, w| {
        let part = g.narrow(1, r0, w.dim(0)?)?.matmul(&w.to_dtype(g.dtype())?)?;
        acc = Some(match acc.take() {
            None => part,
            Some(a) => (a + part)?,
        });
        Ok(())
    })?;
    acc.ok_or_else(|| candle_core::Error::Msg("empty weight".into()))
}

/// A frozen projection with an optional (unquantized) bias.
#[derive(Clone)]
pub struct FrozenLinear {
    weight: Arc<FrozenWeight>,
    op: Arc<Box<dyn CustomOp1 + Send + Sync>>,
    bias: Option<Tensor>,
}

impl FrozenLinear {
    pub fn new(weight: FrozenWeight, bias: Option<Tensor>) -> Self {
        Self::from_arc(Arc::new(weight), bias)
    }

    pub fn from_arc(weight: Arc<FrozenWeight>, bias: Option<Tensor>) -> Self {
        let op: Arc<Box<dyn CustomOp1 + Send + Sync>> = Arc::new(Box::new(FrozenMatMul(weight.clone())));
        Self { weight, op, bias }
    }

    pub fn weight(&self) -> &Arc<FrozenWeight> {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// (out, in).
    pub fn dims(&self) -> (usize, usize) {
        self.weight.dims()
    }

    pub fn storage_bytes(&self) -> usize {
        self.weight.storage_bytes()
            + self.bias.as_ref().map_or(0, |b| b.elem_count() * b.dtype().size_in_bytes())
    }

    /// `x (…, in) → (…, out)` in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let y = x.apply_op1_arc(self.op.clone())?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            None => y,
        })
    }

    /// [`Self::forward`] for generation: on CPU the input is rounded to 8 bits per 32
    /// values and multiplied on the quantized blocks (as llama.cpp does), much faster
    /// than the exact product training uses. No gradient.
    pub fn forward_infer(&self, x: &Tensor) -> Result<Tensor> {
        let mut ys = Self::forward_group(&[self], x)?;
        ys.pop().ok_or_else(|| crate::model::error::ModelError::Input("no projection".into()))
    }

    /// `x · Wᵢᵀ (+ bᵢ)` for several projections of one input, as one parallel job
    /// when the CPU kernels take all of them (the input is quantized once and the
    /// thread pool wakes once); otherwise one by one. Inference only: the grouped
    /// outputs carry no gradient.
    pub fn forward_group(lins: &[&FrozenLinear], x: &Tensor) -> Result<Vec<Tensor>> {
        #[cfg(target_arch = "x86_64")]
        if let Some(ys) = Self::cpu_group(lins, x)? {
            return Ok(ys);
        }
        lins.iter().map(|l| l.forward(x)).collect()
    }

    #[cfg(target_arch = "x86_64")]
    fn cpu_group(lins: &[&FrozenLinear], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            return Ok(None);
        }
        let k = x.dim(candle_core::D::Minus1)?;
        let mut qs = Vec::with_capacity(lins.len());
        for l in lins {
            match l.weight.as_ref() {
                FrozenWeight::Ggml(q) if l.dims().1 == k && qmm_cpu::supports(q.dtype(), k) => qs.push(q),
                _ => return Ok(None),
            }
        }
        let x = x.contiguous()?;
        let m = x.elem_count() / k;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let datas = qs.iter().map(|q| q.data()).collect::<candle_core::Result<Vec<_>>>()?;
        let parts: Vec<qmm_cpu::Part> = qs
            .iter()
            .zip(&datas)
            .map(|(q, d)| qmm_cpu::Part { dtype: q.dtype(), data: d, rows: q.shape().dims()[0] })
            .collect();
        let mut dims = x.dims().to_vec();
        let mut ys = Vec::with_capacity(lins.len());
        for (y, l) in qmm_cpu::matmul_many(&parts, k, &xs, m).into_iter().zip(lins) {
            if let Some(last) = dims.last_mut() {
                *last = l.dims().0;
            }
            let y = Tensor::from_vec(y, dims.as_slice(), x.device())?;
            ys.push(match &l.bias {
                Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
                None => y,
            });
        }
        Ok(Some(ys))
    }

    /// The input gradient of [`Self::forward`] for an output gradient `grad_y (…, out)`, as
    /// (rows, in) in grad's dtype (the bias has no effect on it).
    pub fn input_grad(&self, grad_y: &Tensor) -> Result<Tensor> {
        let (n, k) = self.dims();
        let gx = input_grad(&self.weight, grad_y)?;
        Ok(gx.reshape((grad_y.elem_count() / n, k))?)
    }

    /// Quantizes a dense (out, in) matrix to a GGUF block type.
    pub fn quantize_ggml(w: &Tensor, dtype: GgmlDType, bias: Option<Tensor>) -> Result<Self> {
        let q = QTensor::quantize(&w.to_dtype(DType::F32)?, dtype)?;
        Ok(Self::new(FrozenWeight::Ggml(Arc::new(q)), bias))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::rand_t;
    use candle_core::Var;

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let s = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        d / s
    }

    /// Forward and input-gradient of the frozen op against a dense matmul of the
    /// dequantized weight, for every storage type the loaders produce.
    #[test]
    fn frozen_linear_backward_matches_dense_reference_for_each_type() {
        let dense = rand_t((48, 512), 1);
        let x0 = rand_t((6, 512), 2).reshape((2, 3, 512)).unwrap();
        let gy = rand_t((6, 48), 3).reshape((2, 3, 48)).unwrap();
        let mut kinds: Vec<FrozenLinear> = [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::Q8_0,
        ]
        .iter()
        .map(|t| FrozenLinear::quantize_ggml(&dense, *t, None).unwrap())
        .collect();
        kinds.push(FrozenLinear::new(
            FrozenWeight::Nf4(Nf4Tensor::quantize(&dense, &Device::Cpu).unwrap()),
            None,
        ));
        kinds.push(FrozenLinear::new(FrozenWeight::Dense(dense.clone()), None));
        for lin in &kinds {
            let name = lin.weight().type_name();
            let w = lin.weight().dequantize(DType::F32).unwrap();
            let x = Var::from_tensor(&x0).unwrap();
            let y = lin.forward(x.as_tensor()).unwrap();
            let y_ref = x0.broadcast_matmul(&w.t().unwrap()).unwrap();
            // GGUF kernels quantize activations to 8 bits: forward agrees to that precision.
            let tol = if matches!(lin.weight().as_ref(), FrozenWeight::Ggml(_)) { 2e-2 } else { 1e-5 };
            assert!(max_rel(&y, &y_ref) < tol, "{name} forward {}", max_rel(&y, &y_ref));
            let grads = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = grads.get(x.as_tensor()).unwrap();
            let gx_ref = gy.broadcast_matmul(&w).unwrap();
            assert!(max_rel(gx, &gx_ref) < 1e-5, "{name} grad {}", max_rel(gx, &gx_ref));
            for id in grads.get_ids() {
                let g = grads.get_id(*id).unwrap();
                assert_ne!(g.dims(), &[48, 512], "{name}: a weight-shaped gradient exists");
            }
        }
    }

    /// A vocabulary-sized weight takes the row-sliced backward; it must agree with one product.
    #[test]
    fn sliced_backward_of_a_large_weight_equals_the_whole_product() {
        let n = BWD_SLICE_ELEMS / 256 * 2 + 40;
        let dense = rand_t((n, 256), 6);
        let lin = FrozenLinear::quantize_ggml(&dense, GgmlDType::Q8_0, None).unwrap();
        let x = Var::from_tensor(&rand_t((3, 256), 7)).unwrap();
        let gy = rand_t((3, n), 8);
        let y = lin.forward(x.as_tensor()).unwrap();
        let grads = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let w = lin.weight().dequantize(DType::F32).unwrap();
        let want = gy.matmul(&w).unwrap();
        let got = grads.get(x.as_tensor()).unwrap();
        assert!(max_rel(got, &want) < 1e-5, "{}", max_rel(got, &want));
    }
}
