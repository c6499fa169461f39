//! Logs, traces and metrics.
//!
//! Logs go to stderr through tracing-subscriber, as text or JSON, at the level `RUST_LOG` sets;
//! inside an RPC they carry its trace id. Traces and metrics go through the OpenTelemetry SDK
//! and are exported with OTLP over gRPC to the endpoint the standard variables name
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`); with none, no exporter runs. `OTEL_SERVICE_NAME`
//! and `OTEL_RESOURCE_ATTRIBUTES` describe the process (service name `jobd` by default),
//! `OTEL_METRIC_EXPORT_INTERVAL` sets the metric period, and `OTEL_SDK_DISABLED=true` turns
//! the SDK off. The `Telemetry` returned by `init` flushes what is left on `shutdown`.

mod instruments;
mod metrics;
mod series;

use std::{env, io::IsTerminal, time::Duration};

use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_sdk::{
    Resource, metrics::SdkMeterProvider, propagation::TraceContextPropagator,
    trace::SdkTracerProvider,
};
use tracing_subscriber::{EnvFilter, Layer, filter::Targets, fmt, prelude::*};

pub use instruments::{INSTRUMENTS, Instrument, InstrumentKind};
pub use metrics::{Gauged, Metrics};
pub use series::{AttributeCaps, QueueDepths};

use crate::config::LogFormat;

/// The instrumentation scope of everything jobd records.
pub const SCOPE: &str = "jobd";

/// The installed OpenTelemetry providers; `shutdown` flushes them.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

/// Installs the global log subscriber, tracer provider, meter provider and propagator. Call
/// once, from `main`, inside the Tokio runtime (the OTLP exporter's gRPC client needs it).
pub fn init(format: LogFormat) -> anyhow::Result<Telemetry> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = (!sdk_disabled()).then(resource);
    let tracer_provider = resource.as_ref().map(tracer_provider).transpose()?;
    let meter_provider = match &resource {
        Some(resource) if endpoint_configured("METRICS") => Some(meter_provider(resource)?),
        _ => None,
    };
    install_subscriber(format, tracer_provider.as_ref());
    Ok(Telemetry {
        tracer_provider,
        meter_provider,
    })
}

/// The global tracer provider: exporting with OTLP when an endpoint is set, else recording
/// trace ids for the logs only.
fn tracer_provider(resource: &Resource) -> anyhow::Result<SdkTracerProvider> {
    let mut builder = SdkTracerProvider::builder().with_resource(resource.clone());
    if endpoint_configured("TRACES") {
        builder = builder.with_batch_exporter(
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?,
        );
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    Ok(provider)
}

/// The global meter provider, exporting with OTLP periodically.
fn meter_provider(resource: &Resource) -> anyhow::Result<SdkMeterProvider> {
    let provider = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_periodic_exporter(
            opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()?,
        )
        .build();
    global::set_meter_provider(provider.clone());
    Ok(provider)
}

/// The global log subscriber: logs to stderr as `format`, at the level RUST_LOG sets (info by
/// default), and jobd's spans to `tracer_provider`.
fn install_subscriber(format: LogFormat, tracer_provider: Option<&SdkTracerProvider>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Spans become OpenTelemetry spans only for jobd's own code, not its dependencies'.
    let otel = tracer_provider.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SCOPE))
            .with_filter(Targets::new().with_target("jobd", tracing::Level::INFO))
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

impl Telemetry {
    /// Exports what is still buffered and stops the exporters; blocks, for at most `timeout`
    /// per provider.
    pub fn shutdown(self, timeout: Duration) {
        if let Some(provider) = self.tracer_provider
            && let Err(error) = provider.shutdown_with_timeout(timeout)
        {
            tracing::warn!(%error, "flushing traces failed");
        }
        if let Some(provider) = self.meter_provider
            && let Err(error) = provider.shutdown_with_timeout(timeout)
        {
            tracing::warn!(%error, "flushing metrics failed");
        }
    }
}

/// The metric export period when metrics are exported (`OTEL_METRIC_EXPORT_INTERVAL`, in ms,
/// 60 s by default), so that gauges read from Redis are refreshed once per export.
pub fn metrics_export_interval() -> Option<Duration> {
    if sdk_disabled() || !endpoint_configured("METRICS") {
        return None;
    }
    let millis = env::var("OTEL_METRIC_EXPORT_INTERVAL")
        .ok()
        .and_then(|value| value.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .unwrap_or(60_000);
    Some(Duration::from_millis(millis))
}

fn sdk_disabled() -> bool {
    env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"))
}

/// Whether an OTLP endpoint is named for `signal` (TRACES or METRICS), and its exporter is not
/// turned off with `OTEL_<signal>_EXPORTER=none`.
fn endpoint_configured(signal: &str) -> bool {
    let set = |name: &str| env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let exporter = if signal == "TRACES" {
        "OTEL_TRACES_EXPORTER"
    } else {
        "OTEL_METRICS_EXPORTER"
    };
    let turned_off = env::var(exporter).is_ok_and(|value| value.trim() == "none");
    !turned_off
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")))
}

/// The process's resource: the SDK's detectors (service name, `OTEL_RESOURCE_ATTRIBUTES`),
/// with `jobd` as the service name when nothing else names it.
fn resource() -> Resource {
    let named = env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.is_empty())
        || env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attrs| attrs.contains("service.name="));
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(SCOPE).build()
    }
}
