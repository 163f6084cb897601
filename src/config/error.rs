//! What is wrong with a configuration, said so that it can be fixed without the manual:
//! where (the file, the field), what (the value found), why, and a value that would do.

use std::fmt;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The TOML does not parse or does not fit the schema (the parser's message names the
    /// line and the key).
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(Box<Invalid>),
}

/// A field whose value the gateway cannot run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Where the value came from: the file's path, or a command-line flag.
    pub origin: Option<String>,
    /// The field's path in the file: `backends[0].url`, `timeouts.total`.
    pub field: String,
    /// The value found, as it would be written in the file.
    pub value: Option<String>,
    pub reason: String,
    /// A line that would do, as it would be written in the file.
    pub example: Option<String>,
}

impl fmt::Display for Invalid {
    /// `weir.toml: invalid backends[0].url = "127.0.0.1:8000": must start with http://
    /// (for example url = "http://127.0.0.1:8000")`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        write!(f, "invalid {}", self.field)?;
        if let Some(v) = &self.value {
            write!(f, " = {v}")?;
        }
        write!(f, ": {}", self.reason)?;
        if let Some(e) = &self.example {
            write!(f, " (for example {e})")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// The field at `field` is wrong for `reason`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(Box::new(Invalid {
            origin: None,
            field: field.into(),
            value: None,
            reason: reason.into(),
            example: None,
        }))
    }

    /// The value found, already written as in the file (see [`quoted`], [`duration`]).
    pub fn value(self, value: impl Into<String>) -> ConfigError {
        self.map_invalid(|i| i.value = Some(value.into()))
    }

    /// A line that would do: `url = "http://127.0.0.1:8000"`.
    pub fn example(self, example: impl Into<String>) -> ConfigError {
        self.map_invalid(|i| i.example = Some(example.into()))
    }

    /// Where the value came from, unless already said.
    pub fn origin(self, origin: impl Into<String>) -> ConfigError {
        self.map_invalid(|i| {
            i.origin.get_or_insert_with(|| origin.into());
        })
    }

    /// The field at fault, for an invalid value.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid(i) => Some(&i.field),
            _ => None,
        }
    }

    fn map_invalid(mut self, f: impl FnOnce(&mut Invalid)) -> ConfigError {
        if let ConfigError::Invalid(i) = &mut self {
            f(i);
        }
        self
    }
}

/// A string as TOML writes it.
pub fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// A duration as the file writes it: `"1h 30m"`.
pub fn duration(d: std::time::Duration) -> String {
    format!("\"{}\"", humantime::format_duration(d))
}

/// A duration field that must not be zero; `example` is the line to suggest.
pub fn positive(
    field: impl Into<String>,
    d: std::time::Duration,
    example: &str,
) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(field, "must be greater than 0")
            .value(duration(d))
            .example(example));
    }
    Ok(())
}
