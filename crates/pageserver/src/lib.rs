//! The page store service (issue 4): versioned 8 KiB pages per timeline, fenced by
//! generation, durable before it acknowledges. Not built yet; this crate is a placeholder so
//! the workspace has the shape the design names.
