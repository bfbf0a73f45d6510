//! Network benchmark (todo).
