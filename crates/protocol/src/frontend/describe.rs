//! Describe (`D`).

use super::target::target_message;

target_message!(
    /// Describe: ask for a statement's ParameterDescription + RowDescription, or a
    /// portal's RowDescription.
    Describe,
    b'D'
);
