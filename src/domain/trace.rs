//! The W3C trace context a job carries from its submitter to its workers, bounded.

use std::collections::BTreeMap;

/// The longest `traceparent` a job keeps (W3C's version 00 is 55 bytes).
pub const MAX_TRACEPARENT: usize = 128;
/// The longest `tracestate` a job keeps: W3C's bound on what a vendor must propagate.
pub const MAX_TRACESTATE: usize = 512;

/// The trace context a job keeps, bounded whatever the caller sent: `traceparent` if at most
/// `MAX_TRACEPARENT` bytes (without it, nothing is kept), and `tracestate` cut to at most
/// `MAX_TRACESTATE` bytes as W3C says to cut it: members over 128 bytes go first, then members
/// from the right. Any other key is dropped. Never refused: a job must not fail for its trace.
pub(super) fn bounded_trace_context(
    mut context: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let Some(parent) = context.remove("traceparent") else {
        return BTreeMap::new();
    };
    if parent.len() > MAX_TRACEPARENT {
        return BTreeMap::new();
    }
    let mut bounded = BTreeMap::from([("traceparent".to_owned(), parent)]);
    if let Some(state) = context.remove("tracestate") {
        let mut members: Vec<&str> = state
            .split(',')
            .map(str::trim)
            .filter(|member| !member.is_empty())
            .collect();
        let joined = |members: &[&str]| members.join(",");
        if joined(&members).len() > MAX_TRACESTATE {
            members.retain(|member| member.len() <= 128);
        }
        while joined(&members).len() > MAX_TRACESTATE {
            members.pop();
        }
        if !members.is_empty() {
            bounded.insert("tracestate".to_owned(), joined(&members));
        }
    }
    bounded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_is_bounded() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = |pairs: &[(&str, String)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let kept = bounded_trace_context(context(&[
            ("traceparent", parent.into()),
            ("tracestate", "a=1,b=2".into()),
            ("baggage", "x".repeat(10_000)),
        ]));
        assert_eq!(
            kept,
            context(&[
                ("traceparent", parent.into()),
                ("tracestate", "a=1,b=2".into())
            ])
        );
        let huge = bounded_trace_context(context(&[("traceparent", "0".repeat(16 * 1024))]));
        assert!(huge.is_empty());
        // Long members go first, then members from the right, until it fits.
        let members: Vec<String> = (0..100).map(|i| format!("v{i:02}=value")).collect();
        let state = format!("big={},{}", "x".repeat(200), members.join(","));
        let kept = bounded_trace_context(context(&[
            ("traceparent", parent.into()),
            ("tracestate", state),
        ]));
        let kept = &kept["tracestate"];
        assert!(kept.len() <= MAX_TRACESTATE, "{}", kept.len());
        assert!(kept.starts_with("v00=value,v01=value"), "{kept}");
        assert!(!kept.contains("big="));
    }
}
