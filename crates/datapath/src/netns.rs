//! Network namespaces: create, enter (RAII guard), delete.
