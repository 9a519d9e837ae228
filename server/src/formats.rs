//! Model files converted, not run: GGUF read and written (`gguf`), a LoRA adapter directory as
//! llama.cpp's GGUF adapter (`lora_gguf`), a fused model as one GGUF (`fused_gguf`). The adapter
//! directory's layout itself is defined once, in `kenning_formats::adapter`, for the trainer too.

pub mod fused_gguf;
pub mod gguf;
pub mod lora_gguf;
