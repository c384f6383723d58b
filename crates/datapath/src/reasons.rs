//! Drop reasons and trace points, generated from `bpf/include/ciliate_reasons.h`.

include!(concat!(env!("OUT_DIR"), "/reasons.rs"));

/// Human name of a drop reason ("Invalid source ip"), or "Unknown reason N".
pub fn drop_reason_name(code: u8) -> String {
    DROP_REASONS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or_else(
            || format!("Unknown reason {code}"),
            |(_, _, name)| (*name).to_string(),
        )
}

/// Name of a trace observation point ("to-endpoint").
pub fn trace_point_name(code: u8) -> String {
    TRACE_POINTS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or_else(
            || format!("trace-{code}"),
            |(_, _, name)| (*name).to_string(),
        )
}
