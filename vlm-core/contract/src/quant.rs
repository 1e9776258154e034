//! The user's quantization choice, carried to the model loaders.

use crate::{Error, Result};

/// Weight quantization of the linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    /// Weights in the model dtype.
    #[default]
    None,
    /// 8-bit blocks (GGML Q8_0).
    Int8,
    /// 4-bit blocks (GGML Q4_K, Q4_0/Q8_0 where a shape does not divide into blocks).
    Int4,
}

impl Quantization {
    /// Parses `none`, `int8`/`q8`, `int4`/`q4`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "" | "f" | "float" => Ok(Self::None),
            "int8" | "q8" | "q8_0" | "8bit" => Ok(Self::Int8),
            "int4" | "q4" | "q4_k" | "4bit" => Ok(Self::Int4),
            other => Err(Error::invalid_option(
                "quant",
                format!("\"{other}\" is not a quantization; use none, int8 or int4"),
            )),
        }
    }

    /// Short name as shown in `info()`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Int8 => "int8",
            Self::Int4 => "int4",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!(Quantization::parse("INT4").unwrap(), Quantization::Int4);
        assert_eq!(Quantization::parse("q8").unwrap(), Quantization::Int8);
        assert!(Quantization::parse("int3")
            .unwrap_err()
            .to_string()
            .contains("int8 or int4"));
    }
}
