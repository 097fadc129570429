//! Interop with BuildGrid's own client, both ways: `bgd` reads the `ActionResult` and
//! blobs this backend stores, and blobs `bgd` uploads are found (so never sent again).

mod common;

use cache_core::storage::{EntryKey, Storage};
use cache_core::{
    BlobRef, Cache, CacheBackend, CacheEntry, CacheOutput, CachePolicy, DigestAlgorithm,
    OutputContent, Task,
};
use cache_remote::{RemoteConfig, RemoteStorage};
use std::process::Command;

fn bgd(bgd: &str, url: &str, args: &[&str]) -> String {
    let remote = url.replace("grpc://", "http://");
    let out = Command::new(bgd)
        .args([args[0], "--remote", &remote])
        .args(&args[1..])
        .output()
        .expect("run bgd");
    assert!(
        out.status.success(),
        "bgd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unique(what: &str) -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what} {nanos}\n").into_bytes()
}

#[test]
fn bgd_reads_the_action_result_and_blobs_this_backend_stores() {
    let (Some(url), Some(tool)) = (
        common::peer("TASKCACHE_TEST_REAPI"),
        common::peer("TASKCACHE_TEST_BGD"),
    ) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cache = Cache::new(
            RemoteStorage::open(RemoteConfig::from_url(&url).unwrap()).unwrap(),
            cache_testkit::spawn_blocking,
        );
        let task = Task::new("interop", ["make", "all"]);
        let key = DigestAlgorithm::Blake3.digest(&unique("key"));
        let tool_bytes = unique("#!/bin/sh\necho tool");
        let entry = CacheEntry {
            exit_code: 3,
            duration_ms: 1500,
            stdout: Some(b"hello\n".to_vec()),
            outputs: vec![
                CacheOutput {
                    path: "empty".into(),
                    content: OutputContent::Directory,
                    is_executable: false,
                },
                CacheOutput {
                    path: "bin/tool".into(),
                    content: OutputContent::Bytes(tool_bytes.clone()),
                    is_executable: true,
                },
            ],
            ..CacheEntry::default()
        };
        cache
            .store(&task, &key.to_string(), &entry, CachePolicy::Normal)
            .await
            .unwrap();
        let action = cache
            .storage()
            .action_digest(&EntryKey::new(key, &task))
            .await
            .unwrap();
        let digest = format!("{}/{}", action.digest.hex(), action.size);
        let shown = bgd(&tool, &url, &["actioncache", "get", "--json", &digest]);
        let json_start = shown
            .find('{')
            .unwrap_or_else(|| panic!("no JSON: {shown}"));
        let result: serde_json::Value = serde_json::from_str(&shown[json_start..]).unwrap();
        assert_eq!(result["exitCode"], 3, "{result}");
        let file = &result["outputFiles"][0];
        assert_eq!(file["path"], "bin/tool", "{result}");
        assert_eq!(file["isExecutable"], true, "{result}");
        let want = BlobRef::of(DigestAlgorithm::Sha256, &tool_bytes);
        assert_eq!(file["digest"]["hash"], want.digest.hex(), "{result}");
        assert_eq!(result["outputDirectories"][0]["path"], "empty", "{result}");
        let dir = tempfile::tempdir().unwrap();
        let into = dir.path().join("tool");
        bgd(
            &tool,
            &url,
            &[
                "cas",
                "download-file",
                &format!("{}/{}", want.digest.hex(), want.size),
                into.to_str().unwrap(),
            ],
        );
        assert_eq!(std::fs::read(&into).unwrap(), tool_bytes);
    });
}

#[test]
fn blobs_uploaded_by_bgd_are_found_and_not_sent_again() {
    let (Some(url), Some(tool)) = (
        common::peer("TASKCACHE_TEST_REAPI"),
        common::peer("TASKCACHE_TEST_BGD"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bytes = unique("uploaded by bgd");
    std::fs::write(dir.path().join("f.txt"), &bytes).unwrap();
    bgd(
        &tool,
        &url,
        &["cas", "upload-dir", dir.path().to_str().unwrap()],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let storage = RemoteStorage::open(RemoteConfig::from_url(&url).unwrap()).unwrap();
        let blob = BlobRef::of(DigestAlgorithm::Sha256, &bytes);
        assert!(
            storage
                .find_missing_blobs(vec![blob])
                .await
                .unwrap()
                .is_empty()
        );
        let unknown = BlobRef::of(DigestAlgorithm::Sha256, &unique("never uploaded"));
        assert_eq!(
            storage.find_missing_blobs(vec![unknown]).await.unwrap(),
            [unknown]
        );
    });
}
