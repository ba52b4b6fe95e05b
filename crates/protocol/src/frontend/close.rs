//! Close (`C`).

use super::target::target_message;

target_message!(
    /// Close: drop a prepared statement or portal; answered by CloseComplete.
    Close,
    b'C'
);
