//! Typed errors for every way untrusted bytes can fail to decode.

/// Why bytes read from a member were not accepted. Each variant names the
/// structure (`what`) so a tool can print one line a human understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The buffer is shorter than the structure.
    #[error("{what}: buffer too short ({got} bytes, need {need})")]
    TooShort { what: &'static str, need: usize, got: usize },
    /// The magic number is not the one of this structure.
    #[error("{what}: bad magic {found:02x?} (not a DynamicFS {what})")]
    BadMagic { what: &'static str, found: Vec<u8> },
    /// The stored checksum does not match the contents.
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum { what: &'static str, stored: u32, computed: u32 },
    /// Written by a newer (or unknown) format version.
    #[error("{what}: format version {found} is not supported (this build reads up to {supported})")]
    UnsupportedVersion { what: &'static str, found: u32, supported: u32 },
    /// An incompat feature this build does not know: the member must not be opened.
    #[error("{what}: unknown incompatible feature flags {bits:#x}; a newer DynamicFS wrote this member")]
    UnknownIncompat { what: &'static str, bits: u64 },
    /// A field holds a value that is impossible for a valid structure.
    #[error("{what}: invalid {field}: {reason}")]
    Invalid { what: &'static str, field: &'static str, reason: String },
}

impl FormatError {
    pub(crate) fn invalid(what: &'static str, field: &'static str, reason: impl Into<String>) -> Self {
        FormatError::Invalid { what, field, reason: reason.into() }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, FormatError>;
