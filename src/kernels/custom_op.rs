//! Running ordinary tensor code inside a candle custom op's forward. A custom op receives
//! storages and layouts, not tensors; these functions copy them into graph-free tensors (so the
//! forward can use candle's own kernels, cuBLAS included, without recording a graph) and copy a
//! result back out as the owned storage the op must return. The copies are of activation-sized
//! inputs and outputs only, which is small beside the work the ops do.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaStorage, Layout, Shape, Storage, Tensor};

/// A graph-free tensor holding a copy of what a storage and its layout describe.
pub(crate) fn tensor_of<S>(s: &S, l: &Layout, wrap: fn(S) -> Storage) -> candle_core::Result<Tensor>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    // SAFETY: copy_strided_src writes every element of the layout's shape.
    let mut dst = unsafe { s.device().alloc_uninit(l.shape(), s.dtype())? };
    s.copy_strided_src(&mut dst, 0, l)?;
    Ok(Tensor::from_storage(wrap(dst), l.shape().clone(), BackpropOp::none(), false))
}

/// The contiguous storage of a result tensor, copied out so the op can return it owned.
pub(crate) fn cpu_storage_of(t: &Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(s) => {
            // SAFETY: copy_strided_src writes every element of the layout's shape.
            let mut dst = unsafe { s.device().alloc_uninit(l.shape(), s.dtype())? };
            s.copy_strided_src(&mut dst, 0, l)?;
            Ok((dst, l.shape().clone()))
        }
        _ => candle_core::bail!("custom op: result left the CPU"),
    }
}

pub(crate) fn cuda_storage_of(t: &Tensor) -> candle_core::Result<(CudaStorage, Shape)> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cuda(s) => {
            // SAFETY: copy_strided_src writes every element of the layout's shape.
            let mut dst = unsafe { s.device().alloc_uninit(l.shape(), s.dtype())? };
            s.copy_strided_src(&mut dst, 0, l)?;
            Ok((dst, l.shape().clone()))
        }
        _ => candle_core::bail!("custom op: result left the GPU"),
    }
}
