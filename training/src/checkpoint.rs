//! Gradient checkpointing: MLX's `checkpoint` transform, which mlx-rs does not expose, called through
//! mlx-sys. A checkpointed function keeps only its inputs for the backward pass and computes its
//! inside again there: the activations inside a transformer layer are not held from the forward
//! pass to the backward pass, at the price of a second forward pass of the layer.
//!
//! Everything the function's gradient should reach must be among its inputs (a captured array is a
//! constant to MLX): `Llama::logits` passes a layer's input and the
//! layer's adapter weights.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::panic::AssertUnwindSafe;

use mlx_rs::Array;
use mlx_rs::error::Exception;

/// A function of arrays to arrays, as a checkpointed layer runs it.
type Body<'a> = dyn Fn(&[Array]) -> Result<Vec<Array>, Exception> + 'a;

thread_local! {
    /// Why the last call of a body failed (MLX reports only that it did).
    static FAILURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// `body(inputs)` under MLX's `checkpoint`: the same values, with a backward pass that recomputes
/// the body instead of keeping its intermediate arrays.
///
/// # Safety
/// MLX calls `body` here and again later, while a gradient through the result is built (inside the
/// enclosing `value_and_grad`), and keeps it until the result's graph is gone. Everything `body`
/// borrows must therefore outlive that transform — not only this call: borrow what the transformed
/// function itself borrows from outside (the model, the adapter's layout), and move in (clone) what
/// lives only during the forward pass, such as the arrays the transform passes to that function.
pub unsafe fn checkpointed<'a>(body: impl Fn(&[Array]) -> Result<Vec<Array>, Exception> + 'a, inputs: &[Array]) -> Result<Vec<Array>, Exception> {
    let boxed: Box<Box<Body<'a>>> = Box::new(Box::new(body));
    let payload = Box::into_raw(boxed).cast::<c_void>();
    // SAFETY: `payload` is a leaked `Box<Box<Body>>` that the closure owns from here: `drop_body`
    // frees it once, when MLX drops its last copy of the closure; `call_body` only borrows it.
    let closure = unsafe { mlx_sys::mlx_closure_new_func_payload(Some(call_body), payload, Some(drop_body)) };
    let closure = Closure(closure);
    let checkpointed = Closure(
        // SAFETY: `res` is a fresh closure handle that mlx_checkpoint sets; `closure` is valid.
        unsafe {
            let mut res = mlx_sys::mlx_closure_new();
            if mlx_sys::mlx_checkpoint(&mut res, closure.0) != 0 {
                mlx_sys::mlx_closure_free(res);
                return Err(Exception::custom("mlx checkpoint failed"));
            }
            res
        },
    );
    drop(closure);
    FAILURE.with(|f| f.borrow_mut().take());
    // SAFETY: the input vector holds new references to `inputs` (freed below); `out` is a fresh
    // vector that mlx_closure_apply fills; every array read from it is a new reference we own.
    unsafe {
        let pointers: Vec<mlx_sys::mlx_array> = inputs.iter().map(Array::as_ptr).collect();
        let input = mlx_sys::mlx_vector_array_new_data(pointers.as_ptr(), pointers.len());
        let mut out = mlx_sys::mlx_vector_array_new();
        let status = mlx_sys::mlx_closure_apply(&mut out, checkpointed.0, input);
        mlx_sys::mlx_vector_array_free(input);
        let result = if status == 0 { vector_values(out) } else { Err(failure()) };
        mlx_sys::mlx_vector_array_free(out);
        result
    }
}

fn failure() -> Exception {
    let why = FAILURE.with(|f| f.borrow_mut().take()).unwrap_or_else(|| "an MLX error".to_owned());
    Exception::custom(format!("checkpointed layer: {why}"))
}

/// Owns an `mlx_closure` handle.
struct Closure(mlx_sys::mlx_closure);

impl Drop for Closure {
    fn drop(&mut self) {
        // SAFETY: the handle was created by mlx-c and is freed once.
        unsafe {
            mlx_sys::mlx_closure_free(self.0);
        }
    }
}

/// The arrays of an `mlx_vector_array`, as new references.
///
/// # Safety
/// `vector` must be a valid vector handle.
unsafe fn vector_values(vector: mlx_sys::mlx_vector_array) -> Result<Vec<Array>, Exception> {
    // SAFETY: (caller) `vector` is valid; each `mlx_array_new` handle is set by the get and then
    // owned by the `Array` (freed on its drop).
    unsafe {
        let n = mlx_sys::mlx_vector_array_size(vector);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let mut array = mlx_sys::mlx_array_new();
            if mlx_sys::mlx_vector_array_get(&mut array, vector, i) != 0 {
                mlx_sys::mlx_array_free(array);
                return Err(Exception::custom("reading a checkpointed layer's arrays"));
            }
            out.push(Array::from_ptr(array));
        }
        Ok(out)
    }
}

unsafe extern "C" fn call_body(ret: *mut mlx_sys::mlx_vector_array, input: mlx_sys::mlx_vector_array, payload: *mut c_void) -> c_int {
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        // SAFETY: `payload` is the `Box<Box<Body>>` of `checkpointed`, alive until `drop_body`;
        // `input` is valid for this call; `ret` points at the result handle mlx-c reads after we
        // return (an unallocated handle: overwriting it leaks nothing).
        unsafe {
            let body = &*payload.cast::<Box<Body<'_>>>();
            let arrays = vector_values(input).map_err(|e| e.what().to_owned())?;
            let results = body(&arrays).map_err(|e| e.what().to_owned())?;
            let pointers: Vec<mlx_sys::mlx_array> = results.iter().map(Array::as_ptr).collect();
            *ret = mlx_sys::mlx_vector_array_new_data(pointers.as_ptr(), pointers.len());
        }
        Ok(())
    }));
    let why = match outcome {
        Ok(Ok(())) => return 0,
        Ok(Err(why)) => why,
        Err(_) => "panicked".to_owned(),
    };
    FAILURE.with(|f| *f.borrow_mut() = Some(why));
    1
}

unsafe extern "C" fn drop_body(payload: *mut c_void) {
    if payload.is_null() {
        return;
    }
    // SAFETY: called once by mlx-c with the payload `checkpointed` leaked.
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(payload.cast::<Box<Body<'_>>>()) })));
}

#[cfg(test)]
mod tests {
    use mlx_rs::transforms;

    use super::*;

    fn body(inputs: &[Array]) -> Result<Vec<Array>, Exception> {
        // sin(x·w)·w: a body whose gradient needs its inside.
        let y = inputs[0].multiply(&inputs[1])?;
        Ok(vec![mlx_rs::ops::sin(&y)?.multiply(&inputs[1])?])
    }

    /// Value and gradients of `sum(body(x, w)²)`, and how often the body ran.
    fn value_and_grads(checkpoint: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>, usize) {
        let x = Array::from_slice(&[0.5f32, -1.0, 2.0], &[3]);
        let w = Array::from_slice(&[1.5f32, 0.25, -0.75], &[3]);
        let calls = std::cell::Cell::new(0);
        let counted = |p: &[Array]| {
            calls.set(calls.get() + 1);
            body(p)
        };
        let f = |p: &[Array]| -> Result<Vec<Array>, Exception> {
            // SAFETY: `counted` borrows `calls`, which outlives the value_and_grad below.
            let out = if checkpoint { unsafe { checkpointed(counted, p)? } } else { counted(p)? };
            Ok(vec![out[0].square()?.sum(false)?, out[0].clone()])
        };
        let mut vg = transforms::value_and_grad_with_argnums(f, &[0, 1]);
        let (values, grads) = vg(&[x, w]).unwrap();
        transforms::eval(values.iter().chain(grads.iter())).unwrap();
        (values[1].as_slice::<f32>().to_vec(), grads[0].as_slice::<f32>().to_vec(), grads[1].as_slice::<f32>().to_vec(), calls.get())
    }

    #[test]
    fn a_checkpointed_body_has_the_same_value_and_gradients() {
        let (value, dx, dw, calls) = value_and_grads(false);
        let (value_c, dx_c, dw_c, calls_c) = value_and_grads(true);
        assert_eq!((calls, calls_c), (1, 2), "checkpointed, the body runs again for the backward pass");
        assert_eq!(value, value_c);
        for (a, b) in dx.iter().zip(&dx_c).chain(dw.iter().zip(&dw_c)) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{dx:?} {dx_c:?} {dw:?} {dw_c:?}");
        }
        assert!(dw.iter().all(|g| *g != 0.0), "the gradient reaches the inputs: {dw:?}");
    }

    #[test]
    fn an_error_inside_the_body_is_an_error_with_its_reason() {
        let x = Array::from_slice(&[1.0f32, 2.0], &[2]);
        let y = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3]);
        let failing = |p: &[Array]| -> Result<Vec<Array>, Exception> { Ok(vec![p[0].add(&p[1])?]) };
        // SAFETY: the bodies borrow nothing.
        let error = unsafe { checkpointed(failing, &[x.clone(), y]) }.unwrap_err();
        assert!(error.what().contains("checkpointed layer"), "{}", error.what());
        // And the next call works.
        let again = unsafe { checkpointed(|p: &[Array]| Ok(vec![p[0].clone()]), &[x]) }.unwrap();
        assert_eq!(again[0].as_slice::<f32>(), &[1.0, 2.0]);
    }
}
