//! Connection pooler (being written).
