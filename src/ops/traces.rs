//! Traces (`EMGATE_OTLP_ENDPOINT`; README, "Traces"): OpenTelemetry spans
//! over OTLP/HTTP, made from emgate's own `tracing` spans by
//! `tracing-opentelemetry`.
//!
//! - One span per client request (`request`: route, rule, cache result,
//!   client name, request id, status; never a credential), with children
//!   for the cache lookup, the fleet's lease and EM's request.
//! - A client's W3C `traceparent` makes the request span its child (and a
//!   sampled one is always followed); EM's request carries a `traceparent`
//!   of its own span.
//! - Sampling by ratio (`EMGATE_OTLP_SAMPLE_RATIO`) for requests that come
//!   without a sampled parent.
//! - The SDK's batch processor exports from a thread of its own, with a
//!   bounded queue: spans past it are dropped, never waited for, so a
//!   collector that is down costs no request anything and memory stays
//!   bounded.
//!
//! Off (the default), nothing here runs: [`on`] is false, and a cache hit
//! makes no span at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Tracer,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::TraceSettings;

static ON: AtomicBool = AtomicBool::new(false);

/// Spans waiting for export at most; past it new ones are dropped.
const QUEUE: usize = 2048;

/// How often the batch is sent.
const EVERY: Duration = Duration::from_millis(500);

/// Longest wait for the collector per export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether traces are on (a collector is set).
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The tracer provider: flushes what is queued when dropped (at exit).
pub struct Provider(SdkTracerProvider);

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// The provider and tracer for `settings`; an error names what is wrong.
pub fn start(settings: &TraceSettings) -> Result<(Provider, Tracer), String> {
    let endpoint = format!(
        "{}/v1/traces",
        settings.endpoint.to_string().trim_end_matches('/')
    );
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers(Default::default())
        .build()
        .map_err(|e| format!("EMGATE_OTLP_ENDPOINT: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(QUEUE)
        .with_scheduled_delay(EVERY)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        )
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("emgate")
                .build(),
        )
        .build();
    let tracer = provider.tracer("emgate");
    Ok((Provider(provider), tracer))
}

/// Spans are made from now on (the subscriber with the traces layer is
/// installed).
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Makes the W3C `traceparent` of a client's `headers` the parent of
/// `span`; nothing when there is none or it does not parse. The client's
/// `tracestate` is not taken: it would go on to EM with every fetch (which
/// serves other clients too) and sit in every queued span, at up to the
/// size of a request head.
pub fn follow(span: &Span, headers: &HeaderMap) {
    let Some(traceparent) = headers.get("traceparent") else {
        return;
    };
    let mut only = HeaderMap::with_capacity(1);
    only.insert("traceparent", traceparent.clone());
    let parent = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(&only));
    let _ = span.set_parent(parent);
}

/// Puts the `traceparent` of `span` in `headers` (EM's request).
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(
        &span.context(),
        &mut opentelemetry_http::HeaderInjector(headers),
    );
}
