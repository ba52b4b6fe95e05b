//! Bodiless frontend messages: Sync, Flush, Terminate.

use crate::message::empty_message;

empty_message!(
    /// Sync (`S`): end of an extended-query batch; the server answers ReadyForQuery.
    Sync,
    b'S'
);
empty_message!(
    /// Flush (`H`): ask the server to send what it has buffered.
    Flush,
    b'H'
);
empty_message!(
    /// Terminate (`X`): the client is closing.
    Terminate,
    b'X'
);
