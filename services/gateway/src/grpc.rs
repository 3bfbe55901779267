//! The gRPC ingest API (`proto/ve/ingest/v1/ingest.proto`) and OTLP/gRPC traces on `[grpc]
//! listen`. Authentication is the `authorization` metadata entry, as over HTTP.

use std::sync::Arc;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use tonic::codec::CompressionEncoding;
use ve_schema::ingest::Kind;
use ve_telemetry::TraceContext;

use crate::ingest::count_rejected;
use crate::otlp::OtlpTraceService;
use crate::{Channel, GatewayError, GrpcConfig, Ingestor, Item, RequestMeta, TenantAuth};

/// Generated from `proto/ve/ingest/v1/ingest.proto`.
#[allow(
    unreachable_pub,
    missing_debug_implementations,
    unused_results,
    clippy::all,
    rust_2018_idioms
)]
pub mod proto {
    tonic::include_proto!("ve.ingest.v1");
}

use proto::ingest_service_server::{IngestService, IngestServiceServer};
use proto::{IngestRequest, IngestResponse, Rejection};

/// The tonic server with both services, ready to serve.
pub fn server(ingestor: Arc<Ingestor>, config: &GrpcConfig) -> tonic::transport::server::Router {
    let ingest = IngestServiceServer::new(GrpcIngest {
        ingestor: Arc::clone(&ingestor),
    })
    .max_decoding_message_size(config.max_message_bytes)
    .accept_compressed(CompressionEncoding::Gzip)
    .send_compressed(CompressionEncoding::Gzip);
    let traces = TraceServiceServer::new(OtlpTraceService { ingestor })
        .max_decoding_message_size(config.max_message_bytes)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    tonic::transport::Server::builder()
        .add_service(ingest)
        .add_service(traces)
}

pub(crate) fn grpc_tenant<T>(
    ingestor: &Ingestor,
    request: &tonic::Request<T>,
) -> Result<Arc<TenantAuth>, tonic::Status> {
    let header = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    ingestor.authenticate(header).map_err(|e| {
        count_rejected(&e, 1);
        e.grpc_status()
    })
}

pub(crate) fn grpc_meta<T>(request: &tonic::Request<T>) -> RequestMeta {
    let text = |name: &str| {
        request
            .metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    RequestMeta {
        source_id: text(crate::http::SOURCE_HEADER).map(str::to_owned),
        client_ip: request.remote_addr().map(|a| a.ip().to_string()),
        user_agent: text("user-agent").map(str::to_owned),
        trace: text(ve_telemetry::TRACEPARENT).and_then(TraceContext::parse),
    }
}

#[derive(Debug, Clone)]
struct GrpcIngest {
    ingestor: Arc<Ingestor>,
}

#[tonic::async_trait]
impl IngestService for GrpcIngest {
    async fn ingest(
        &self,
        request: tonic::Request<IngestRequest>,
    ) -> Result<tonic::Response<IngestResponse>, tonic::Status> {
        let started = Instant::now();
        let tenant = grpc_tenant(&self.ingestor, &request)?;
        let mut meta = grpc_meta(&request);
        let body = request.get_ref();
        if !body.source_id.trim().is_empty() {
            meta.source_id = Some(body.source_id.trim().to_owned());
        }
        if body.events.is_empty() {
            let error = GatewayError::BadRequest("the batch has no events".into());
            count_rejected(&error, 1);
            return Err(error.grpc_status());
        }
        self.ingestor
            .admit(&tenant, body.events.len())
            .map_err(|e| {
                count_rejected(&e, body.events.len());
                e.grpc_status()
            })?;
        let items = body
            .events
            .iter()
            .map(|event| Item {
                kind: Kind::parse(event.kind.trim()).ok_or_else(|| {
                    format!(
                        "unknown kind `{}` (expected one of web, app, metric, span, run, step, decision)",
                        event.kind
                    )
                }),
                json: event.json.as_slice().into(),
            })
            .collect();
        let report = self
            .ingestor
            .ingest(&tenant, Channel::Grpc, items, &meta, started)
            .await
            .map_err(|e| e.grpc_status())?;
        Ok(tonic::Response::new(IngestResponse {
            status: report.status.to_owned(),
            batch_id: report.batch_id,
            events_accepted: report.events_accepted as u32,
            events_rejected: report.events_rejected as u32,
            ingest_latency_ms: report.ingest_latency_ms,
            rejected: report
                .rejected
                .into_iter()
                .map(|r| Rejection {
                    index: r.index as u32,
                    reason: r.reason,
                })
                .collect(),
        }))
    }
}
