//! The task description and policy resolution.

use cache_core::{CachePolicy, OutputType, Task, effective_policy};

const EXAMPLE: &str = r#"{
  "id": "build-web",
  "runtime": "node-20",
  "command": ["npm", "run", "build"],
  "shell": false,
  "env": { "NODE_ENV": "production", "CI": "true" },
  "inputs": ["web/src/**/*.ts", "web/package.json", "web/package-lock.json"],
  "outputs": [
    { "path": "web/dist", "type": "cas" },
    { "path": "web/report.html", "type": "orchestrator" }
  ],
  "depends_on": ["install-web"],
  "cache_policy": "normal",
  "deployment": false,
  "manual_approval": false,
  "label": "Build the web bundle"
}"#;

#[test]
fn origin_task_json_deserializes_and_ignores_unknown_fields() {
    let t: Task = serde_json::from_str(EXAMPLE).unwrap();
    assert_eq!(t.id, "build-web");
    assert_eq!(t.command, ["npm", "run", "build"]);
    assert!(!t.shell);
    assert_eq!(t.env["NODE_ENV"], "production");
    assert_eq!(t.inputs.len(), 3);
    assert_eq!(t.outputs[0].kind, OutputType::Cas);
    assert_eq!(t.outputs[1].kind, OutputType::Orchestrator);
    assert_eq!(t.cache_policy, CachePolicy::Normal);
    assert!(!t.deployment);
}

#[test]
fn minimal_task_gets_defaults() {
    let t: Task = serde_json::from_str(r#"{"id":"x","outputs":[{"path":"o"}]}"#).unwrap();
    assert_eq!(t.cache_policy, CachePolicy::Normal);
    assert_eq!(t.outputs[0].kind, OutputType::Cas);
    assert!(t.command.is_empty());
}

#[test]
fn policies_are_lowercase_in_json() {
    for p in CachePolicy::ALL {
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, format!("\"{}\"", p.as_str()));
        assert_eq!(serde_json::from_str::<CachePolicy>(&json).unwrap(), p);
        assert_eq!(p.as_str().parse::<CachePolicy>().unwrap(), p);
    }
    assert!(serde_json::from_str::<CachePolicy>("\"Normal\"").is_err());
    assert!(
        "sometimes"
            .parse::<CachePolicy>()
            .unwrap_err()
            .contains("normal, readonly")
    );
}

#[test]
fn deployment_is_always_disabled() {
    let mut t = Task::new("deploy", ["./deploy"]);
    t.deployment = true;
    for own in CachePolicy::ALL {
        t.cache_policy = own;
        for global in [
            None,
            Some(CachePolicy::Normal),
            Some(CachePolicy::Writeonly),
        ] {
            assert_eq!(effective_policy(&t, global), CachePolicy::Disabled);
        }
    }
}

#[test]
fn global_override_intersects() {
    use CachePolicy::{Disabled, Normal, Readonly, Writeonly};
    let cases = [
        (Normal, None, Normal),
        (Normal, Some(Readonly), Readonly),
        (Writeonly, Some(Readonly), Disabled),
        (Disabled, Some(Normal), Disabled),
        (Readonly, Some(Normal), Readonly),
        (Normal, Some(Writeonly), Writeonly),
        (Readonly, Some(Readonly), Readonly),
        (Normal, Some(Disabled), Disabled),
    ];
    for (own, global, want) in cases {
        let mut t = Task::new("t", ["true"]);
        t.cache_policy = own;
        assert_eq!(effective_policy(&t, global), want, "{own} with {global:?}");
    }
}

#[test]
fn a_task_collects_its_declared_outputs_with_its_own_symlink_opt_in() {
    let ws = tempfile::tempdir().unwrap();
    let ws = ws.path().canonicalize().unwrap();
    std::fs::create_dir_all(ws.join("dist/sub")).unwrap();
    std::fs::write(ws.join("dist/sub/a.js"), b"a").unwrap();
    std::fs::write(ws.join("report.txt"), b"r").unwrap();
    std::fs::write(ws.join("undeclared.txt"), b"u").unwrap();
    let mut task = Task::new("build", ["make"]);
    for path in ["dist", "report.txt"] {
        task.outputs.push(cache_core::TaskOutput {
            path: path.into(),
            kind: OutputType::Cas,
        });
    }
    let outs = task.collect_outputs(&ws).unwrap();
    let paths: Vec<&str> = outs.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(paths, ["dist", "dist/sub", "dist/sub/a.js", "report.txt"]);

    // An absolute symlink is refused unless the task opted in.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/usr", ws.join("dist/abs")).unwrap();
        let e = task.collect_outputs(&ws).unwrap_err();
        assert_eq!(e.fault(), cache_core::Fault::Caller, "{e}");
        task.allow_absolute_symlinks = true;
        let outs = task.collect_outputs(&ws).unwrap();
        assert!(outs.iter().any(|o| o.path == "dist/abs"));
    }

    // A declared path that is not a relative path is the caller's error, named.
    task.outputs.push(cache_core::TaskOutput {
        path: "../outside".into(),
        kind: OutputType::Cas,
    });
    let e = task.collect_outputs(&ws).unwrap_err();
    assert!(e.to_string().contains("../outside"), "{e}");
    assert_eq!(e.fault(), cache_core::Fault::Caller);
}
