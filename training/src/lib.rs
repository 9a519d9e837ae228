//! kenning's MLX side (the only code that knows mlx-rs): the transformer models (`model`, `text`),
//! LoRA adapters in mlx_lm's format (`lora`), training data (`data`) and the training loop (`train`).

#[cfg(target_os = "linux")]
mod linux;
pub mod checkpoint;
pub mod data;
pub mod export;
pub mod lora;
pub mod model;
pub mod models;
pub mod text;
pub mod train;

use mlx_rs::Array;

/// `a · b` for two small f32 matrices (row-major), computed by MLX; a smoke test of the build.
pub fn matmul(a: &[f32], a_shape: (usize, usize), b: &[f32], b_shape: (usize, usize)) -> Result<Vec<f32>, mlx_rs::error::Exception> {
    let a = Array::from_slice(a, &[a_shape.0 as i32, a_shape.1 as i32]);
    let b = Array::from_slice(b, &[b_shape.0 as i32, b_shape.1 as i32]);
    let c = a.matmul(&b)?;
    c.eval()?;
    Ok(c.as_slice::<f32>().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlx_multiplies_matrices() {
        let c = matmul(&[1.0, 2.0, 3.0, 4.0], (2, 2), &[5.0, 6.0, 7.0, 8.0], (2, 2)).unwrap();
        assert_eq!(c, vec![19.0, 22.0, 43.0, 50.0]);
    }

    #[test]
    fn random_numbers_work() {
        // mlx-rs seeds its random state from a clock (macOS's mach_approximate_time: see linux.rs).
        let r = mlx_rs::random::uniform::<_, f32>(0.0, 1.0, &[4], None).unwrap();
        r.eval().unwrap();
        assert!(r.as_slice::<f32>().iter().all(|x| (0.0..1.0).contains(x)));
    }
}
