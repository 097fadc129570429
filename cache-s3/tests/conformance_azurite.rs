//! The full cache-testkit suite against Azurite (Azure's blob storage emulator),
//! started by `cargo xtask peers up`, through an `az://` URL as a user gives it
//! (emulator mode: the development account at the peer's address), each test under
//! its own prefix. Azurite hosts every case.

mod common;

use cache_s3::object_store::list::{PaginatedListOptions, PaginatedListStore};
use cache_s3::object_store::{
    GetOptions, GetRange, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use cache_s3::{S3Options, S3Storage};
use cache_testkit::{Harness, MemoryBackend};
use std::sync::Arc;

/// The storage on Azurite under a fresh prefix, or `None` when it is not up.
fn storage(test: &str) -> Option<S3Storage> {
    let (endpoint, container) = common::azurite_peer(test)?;
    let url =
        url::Url::parse(&format!("az://{container}/{}", common::unique_prefix(test))).unwrap();
    Some(
        S3Storage::open_with_env(&url, S3Options::default(), &common::azurite_env(&endpoint))
            .unwrap(),
    )
}

async fn harness() -> Harness {
    let test = &common::current_test();
    let Some(storage) = storage(test) else {
        // Skipped: the case runs against the reference backend so it still passes
        // for the right reason (nothing about Azure is claimed).
        return MemoryBackend::new().harness();
    };
    let tamper = common::S3Tamper(storage.clone());
    Harness::from_storage(storage, Arc::new(tamper)).with_capabilities(common::capabilities())
}

cache_testkit::conformance_suite!(harness);

/// What the backend relies on and the suite would not notice if the emulator ignored
/// it (a second create-only put of the same bytes succeeds either way): Azurite
/// refuses a create-only put over an existing blob, answers ranged reads with the
/// range, and pages a listing with continuation tokens.
#[test]
fn azurite_honours_create_only_puts_ranges_and_pages() {
    let Some(storage) = storage("azurite_capabilities") else {
        return;
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = storage.store();
        let at = |name: &str| storage.prefix().clone().join(name);
        let create = || PutOptions::from(PutMode::Create);
        store
            .put_opts(&at("a"), PutPayload::from_static(b"0123456789"), create())
            .await
            .unwrap();
        let again = store
            .put_opts(&at("a"), PutPayload::from_static(b"other"), create())
            .await;
        assert!(
            matches!(
                again,
                Err(cache_s3::object_store::Error::AlreadyExists { .. })
            ),
            "a second create-only put: {again:?}"
        );
        let range = GetOptions {
            range: Some(GetRange::Bounded(2..5)),
            ..GetOptions::default()
        };
        let got = store.get_opts(&at("a"), range).await.unwrap();
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"234");
        store
            .put(&at("b"), PutPayload::from_static(b"b"))
            .await
            .unwrap();
        // Two objects, one a page: a token, then the second page and none.
        let (endpoint, container) = common::azurite_peer("azurite_capabilities").unwrap();
        let lister = common::azurite_store(&endpoint, &container);
        let prefix = format!("{}/", storage.prefix());
        let page = |token: Option<String>| {
            let options = PaginatedListOptions {
                max_keys: Some(1),
                page_token: token,
                ..PaginatedListOptions::default()
            };
            lister.list_paginated(Some(&prefix), options)
        };
        let first = page(None).await.unwrap();
        assert_eq!(first.result.objects.len(), 1);
        assert!(first.page_token.is_some(), "no continuation token");
        let second = page(first.page_token).await.unwrap();
        assert_eq!(second.result.objects.len(), 1);
        assert_ne!(
            first.result.objects[0].location,
            second.result.objects[0].location
        );
        assert!(second.page_token.is_none(), "{:?}", second.page_token);
    });
}
