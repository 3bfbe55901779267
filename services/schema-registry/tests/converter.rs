//! End-to-end: the `schema_registry_converter` client our services use, over real HTTP.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::sync::Arc;

use apache_avro::types::Value;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedReference, SuppliedSchema,
};
use ve_schema_registry::{MemoryLog, Registry, RegistryConfig, router};

async fn serve() -> (String, Arc<Registry>) {
    let log = MemoryLog::new();
    let registry = Registry::new(log.clone(), RegistryConfig::default());
    let _feeder = log.attach(&registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = router(registry.clone());
    let _server = tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), registry)
}

fn settings(url: &str) -> SrSettings {
    SrSettings::new_builder(url.to_owned())
        .no_proxy()
        .build()
        .expect("settings")
}

const HEARTBEAT: &str = r#"{"type":"record","name":"Heartbeat","namespace":"ve.test","fields":[{"name":"beat","type":"long"}]}"#;

#[tokio::test]
async fn converter_registers_encodes_and_decodes() {
    let (url, _registry) = serve().await;
    let encoder = AvroEncoder::new(settings(&url));
    let schema = SuppliedSchema::new(
        Some("ve.test.Heartbeat".to_owned()),
        SchemaType::Avro,
        HEARTBEAT.to_owned(),
    );
    let strategy =
        SubjectNameStrategy::TopicNameStrategyWithSchema("heartbeat".to_owned(), false, schema);
    let bytes = encoder
        .encode(vec![("beat", Value::Long(3))], strategy)
        .await
        .expect("encode");
    assert_eq!(bytes, vec![0, 0, 0, 0, 1, 6]);

    let decoder = AvroDecoder::new(settings(&url));
    let decoded = decoder.decode(Some(&bytes)).await.expect("decode");
    assert_eq!(
        decoded.value,
        Value::Record(vec![("beat".to_owned(), Value::Long(3))])
    );

    // Encoding against the latest registered version, without supplying the schema.
    let latest = AvroEncoder::new(settings(&url));
    let bytes = latest
        .encode(
            vec![("beat", Value::Long(4))],
            SubjectNameStrategy::TopicNameStrategy("heartbeat".to_owned(), false),
        )
        .await
        .expect("encode with latest");
    assert_eq!(bytes, vec![0, 0, 0, 0, 1, 8]);
}

#[tokio::test]
async fn converter_handles_references() {
    let (url, registry) = serve().await;
    let address = r#"{"type":"record","name":"Address","namespace":"ve.test","fields":[{"name":"city","type":"string"}]}"#;
    // The converter inlines references only when written as a short name in the same
    // namespace (or `.ns.Name`), so not as `ve.test.Address`.
    let person = r#"{"type":"record","name":"Person","namespace":"ve.test","fields":[{"name":"name","type":"string"},{"name":"home","type":"Address"}]}"#;
    let schema = SuppliedSchema::new(
        Some("ve.test.Person".to_owned()),
        SchemaType::Avro,
        person.to_owned(),
    )
    .with_references(vec![SuppliedReference::new(
        "ve.test.Address".to_owned(),
        "ve.test.Address".to_owned(),
        address.to_owned(),
    )]);
    let encoder = AvroEncoder::new(settings(&url));
    let bytes = encoder
        .encode(
            vec![
                ("name", Value::String("ada".to_owned())),
                (
                    "home",
                    Value::Record(vec![(
                        "city".to_owned(),
                        Value::String("london".to_owned()),
                    )]),
                ),
            ],
            SubjectNameStrategy::TopicNameStrategyWithSchema("people".to_owned(), false, schema),
        )
        .await
        .expect("encode");
    // Address got id 1, Person id 2.
    assert_eq!(&bytes[..5], &[0, 0, 0, 0, 2]);
    assert_eq!(
        registry.subjects(false),
        vec!["people-value", "ve.test.Address"]
    );

    let decoder = AvroDecoder::new(settings(&url));
    let decoded = decoder.decode(Some(&bytes)).await.expect("decode");
    let Value::Record(fields) = decoded.value else {
        panic!("not a record: {:?}", decoded.value);
    };
    assert_eq!(
        fields[0],
        ("name".to_owned(), Value::String("ada".to_owned()))
    );
}
