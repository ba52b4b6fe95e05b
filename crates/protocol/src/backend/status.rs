//! Bodiless backend messages.

use crate::message::empty_message;

empty_message!(
    /// EmptyQueryResponse (`I`): the query string was empty.
    EmptyQueryResponse,
    b'I'
);
empty_message!(
    /// ParseComplete (`1`).
    ParseComplete,
    b'1'
);
empty_message!(
    /// BindComplete (`2`).
    BindComplete,
    b'2'
);
empty_message!(
    /// CloseComplete (`3`).
    CloseComplete,
    b'3'
);
empty_message!(
    /// NoData (`n`): the statement or portal returns no rows.
    NoData,
    b'n'
);
empty_message!(
    /// PortalSuspended (`s`): Execute's row limit was reached.
    PortalSuspended,
    b's'
);
