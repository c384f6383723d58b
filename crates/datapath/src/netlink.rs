//! Synchronous rtnetlink: links, addresses, routes. One socket per namespace.
