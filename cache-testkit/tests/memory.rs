//! The whole conformance suite against the reference backend.

async fn harness() -> cache_testkit::Harness {
    cache_testkit::MemoryBackend::new().harness()
}

cache_testkit::conformance_suite!(harness);
