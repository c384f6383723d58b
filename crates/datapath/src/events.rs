//! Decoding of ring buffer events into the API's monitor events.
