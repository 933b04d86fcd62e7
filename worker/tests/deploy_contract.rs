//! The contract between the worker and `deploy/`: every metric the CloudFormation template's
//! alarms and scaling policies (and the KEDA manifest) read is one the CloudWatch publisher
//! emits under the default config, with exactly its dimensions and the statistic its
//! aggregation calls for; and the drain grace periods of the template, the systemd units and the
//! Kubernetes manifest cover the example config's shutdown grace.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runtime::config::{CloudWatchConfig, Config};
use serde_json::Value;
use worker::cloudwatch::{self, METRICS};

/// Metrics from other namespaces the template may read, with their dimensions.
const FOREIGN: &[(&str, &str, &[&str])] = &[(
    "AWS/AutoScaling",
    "GroupInServiceInstances",
    &["AutoScalingGroupName"],
)];

/// Drain time a worker needs beyond `shutdown_grace`: hand-back, final metrics flush, exit.
const DRAIN_MARGIN: Duration = Duration::from_secs(30);

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &str) -> String {
    let p = deploy(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Template(Value);

impl Template {
    fn load() -> Template {
        Template(
            serde_json::from_str(&read("cloudformation/jobfleet.json"))
                .expect("the template is JSON"),
        )
    }

    fn resources(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0["Resources"].as_object().unwrap().iter()
    }

    fn default_of(&self, param: &str) -> &Value {
        let p = &self.0["Parameters"][param];
        assert!(!p.is_null(), "parameter {param} is not declared");
        &p["Default"]
    }

    /// A literal, or a `Ref` to a parameter resolved to its default. Anything else (pseudo
    /// parameters, `Fn::Sub`) stays `None`.
    fn resolve(&self, v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Object(o) if o.len() == 1 && o.contains_key("Ref") => {
                let name = o["Ref"].as_str()?;
                match self.0["Parameters"].get(name) {
                    Some(_) => self.resolve(self.default_of(name)),
                    None => None,
                }
            }
            _ => None,
        }
    }

    fn number(&self, param: &str) -> u64 {
        let v = self.default_of(param);
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("{param} has no numeric default"))
    }
}

/// One metric a resource reads.
#[derive(Debug)]
struct Use {
    resource: String,
    kind: String,
    namespace: String,
    name: String,
    dimensions: Vec<(String, Option<String>)>,
    statistic: Option<String>,
}

/// Every object with a `MetricName` under `v`, with the statistic next to it (`Statistic` on an
/// alarm or a single-metric specification) or one level up (`Stat` of a `MetricStat`).
fn collect(
    t: &Template,
    resource: &str,
    kind: &str,
    v: &Value,
    stat: Option<&str>,
    out: &mut Vec<Use>,
) {
    match v {
        Value::Object(o) => {
            if o.contains_key("MetricName") {
                let resolve = |k: &str| {
                    o.get(k).and_then(|x| t.resolve(x)).unwrap_or_else(|| {
                        panic!("{resource}: {k} must be a literal or a parameter")
                    })
                };
                let dimensions = o
                    .get("Dimensions")
                    .and_then(Value::as_array)
                    .map(|ds| {
                        ds.iter()
                            .map(|d| {
                                (
                                    d["Name"].as_str().unwrap().to_owned(),
                                    t.resolve(&d["Value"]),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Use {
                    resource: resource.to_owned(),
                    kind: kind.to_owned(),
                    namespace: resolve("Namespace"),
                    name: resolve("MetricName"),
                    dimensions,
                    statistic: o
                        .get("Statistic")
                        .and_then(Value::as_str)
                        .or(stat)
                        .map(str::to_owned),
                });
            }
            let stat_here = o.get("Stat").and_then(Value::as_str).or(stat);
            for child in o.values() {
                collect(t, resource, kind, child, stat_here, out);
            }
        }
        Value::Array(a) => {
            for child in a {
                collect(t, resource, kind, child, stat, out);
            }
        }
        _ => {}
    }
}

fn metric_uses(t: &Template) -> Vec<Use> {
    let mut out = Vec::new();
    for (name, r) in t.resources() {
        let kind = r["Type"].as_str().unwrap();
        if matches!(
            kind,
            "AWS::CloudWatch::Alarm" | "AWS::AutoScaling::ScalingPolicy"
        ) {
            collect(t, name, kind, &r["Properties"], None, &mut out);
        }
    }
    out
}

#[test]
fn template_metrics_are_the_ones_the_worker_publishes() {
    let t = Template::load();
    let cw = CloudWatchConfig::default();
    let defaults = Config::default();
    let published_dims: BTreeSet<String> = cloudwatch::dimension_names(&cw).into_iter().collect();
    let uses = metric_uses(&t);
    assert!(!uses.is_empty(), "the template reads no metric");

    for u in &uses {
        let dims: BTreeSet<String> = u.dimensions.iter().map(|(n, _)| n.clone()).collect();
        if u.namespace != cw.namespace {
            let allowed = FOREIGN.iter().any(|(ns, name, ds)| {
                *ns == u.namespace
                    && *name == u.name
                    && dims == ds.iter().map(|d| d.to_string()).collect()
            });
            assert!(
                allowed,
                "{}: reads {}/{} {dims:?}, which the worker does not publish (namespace {})",
                u.resource, u.namespace, u.name, cw.namespace
            );
            continue;
        }
        let spec = cloudwatch::metric(&u.name).unwrap_or_else(|| {
            panic!(
                "{}: metric {} is not in worker::cloudwatch::METRICS ({:?})",
                u.resource,
                u.name,
                METRICS.iter().map(|m| m.name).collect::<Vec<_>>()
            )
        });
        // CloudWatch matches a metric by its full dimension set: a subset or superset matches
        // nothing, and the alarm would sit in INSUFFICIENT_DATA forever.
        assert_eq!(
            dims, published_dims,
            "{}: dimensions of {}",
            u.resource, u.name
        );
        assert_eq!(
            u.statistic.as_deref(),
            Some(spec.aggregation.statistic()),
            "{}: {} must be read with {} ({:?})",
            u.resource,
            u.name,
            spec.aggregation.statistic(),
            spec.aggregation
        );
        let queue = u
            .dimensions
            .iter()
            .find(|(n, _)| n == cloudwatch::QUEUE_DIMENSION)
            .and_then(|(_, v)| v.clone())
            .unwrap_or_else(|| {
                panic!(
                    "{}: Queue dimension must be a literal or a parameter",
                    u.resource
                )
            });
        assert!(
            defaults.queues.contains_key(&queue),
            "{}: queue {queue} is not one of the default queues {:?}",
            u.resource,
            defaults.queues.keys().collect::<Vec<_>>()
        );
    }

    // Not vacuous: the scaling policy tracks Backlog of every default queue, and each queue has
    // its three alarms.
    for q in defaults.queues.keys() {
        let reads = |kind: &str, metric: &str| {
            uses.iter().any(|u| {
                u.kind == kind
                    && u.name == metric
                    && u.dimensions
                        .iter()
                        .any(|(_, v)| v.as_deref() == Some(q.as_str()))
            })
        };
        assert!(
            reads("AWS::AutoScaling::ScalingPolicy", cloudwatch::BACKLOG),
            "no scaling on {q}"
        );
        for m in [
            cloudwatch::VISIBLE,
            cloudwatch::DLQ_DEPTH,
            cloudwatch::OLDEST_AGE,
        ] {
            assert!(reads("AWS::CloudWatch::Alarm", m), "no {m} alarm for {q}");
        }
    }
}

/// A paused queue's jobs wait on purpose: the alarms on its depth and age read `Paused` beside
/// the value (metric math `value * (1 - paused)`), and the scaling policy reads `Backlog`, which
/// a paused queue publishes as 0 (`worker::cloudwatch`), so a pause neither pages anyone nor
/// grows the group.
#[test]
fn depth_and_age_alarms_are_silent_while_their_queue_is_paused() {
    let t = Template::load();
    let uses = metric_uses(&t);
    let mut checked = 0;
    for (name, r) in t.resources() {
        if r["Type"] != "AWS::CloudWatch::Alarm" {
            continue;
        }
        let here: Vec<&Use> = uses.iter().filter(|u| &u.resource == name).collect();
        let reads = |m: &str| here.iter().find(|u| u.name == m);
        for m in [cloudwatch::VISIBLE, cloudwatch::OLDEST_AGE] {
            let Some(value) = reads(m) else { continue };
            let paused = reads(cloudwatch::PAUSED)
                .unwrap_or_else(|| panic!("{name}: alarms on {m} but does not read Paused"));
            assert_eq!(paused.dimensions, value.dimensions, "{name}: same queue");
            let metrics = r["Properties"]["Metrics"].as_array().unwrap();
            let returned: Vec<&Value> = metrics
                .iter()
                .filter(|x| x["ReturnData"] == Value::Bool(true))
                .collect();
            assert_eq!(returned.len(), 1, "{name}: one expression decides");
            let expr = returned[0]["Expression"].as_str().unwrap_or_default();
            assert_eq!(expr, "value * (1 - paused)", "{name}");
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * Config::default().queues.len(), "depth + age per queue");
}

#[test]
fn template_iam_and_drain_match_the_worker() {
    let t = Template::load();
    let cw = CloudWatchConfig::default();
    // PutMetricData is allowed only in the namespace the worker publishes to.
    let role = t
        .resources()
        .find(|(_, r)| r["Type"] == "AWS::IAM::Role")
        .unwrap()
        .1;
    let statements = role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_array()
        .unwrap();
    let put = statements
        .iter()
        .find(|s| s["Action"] == "cloudwatch:PutMetricData")
        .expect("a PutMetricData statement");
    let ns = t.resolve(&put["Condition"]["StringEquals"]["cloudwatch:namespace"]);
    assert_eq!(ns.as_deref(), Some(cw.namespace.as_str()));

    // The lifecycle hook holds a terminating instance for at least the worker's drain.
    let group = t
        .resources()
        .find(|(_, r)| r["Type"] == "AWS::AutoScaling::AutoScalingGroup")
        .unwrap()
        .1;
    let hook = &group["Properties"]["LifecycleHookSpecificationList"][0];
    assert_eq!(
        hook["LifecycleTransition"],
        "autoscaling:EC2_INSTANCE_TERMINATING"
    );
    assert_eq!(hook["HeartbeatTimeout"]["Ref"], "DrainGraceSeconds");
    assert_eq!(hook["DefaultResult"], "CONTINUE");
    let drain = Duration::from_secs(t.number("DrainGraceSeconds"));
    let grace = Duration::from_secs(t.number("WorkerShutdownGraceSeconds"));
    assert!(
        drain >= grace + DRAIN_MARGIN,
        "DrainGraceSeconds {drain:?} < shutdown grace {grace:?} + {DRAIN_MARGIN:?}"
    );
    // The scaling metric divides by instances in service: it needs at least one.
    assert!(t.number("MinSize") >= 1);
    let collected = &group["Properties"]["MetricsCollection"][0]["Metrics"];
    assert!(
        collected
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "GroupInServiceInstances"),
        "the group must collect GroupInServiceInstances for the scaling metric"
    );
}

/// `key=value` lines of a systemd unit, by key (last wins).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=').map(str::trim))
        .next_back()
        .map(str::to_owned)
}

#[test]
fn example_config_and_units_agree_on_the_drain() {
    let cfg = Config::parse(&read("config.example.toml")).expect("config.example.toml parses");
    cfg.validate().expect("config.example.toml is valid");
    let cw = CloudWatchConfig::default();
    assert_eq!(
        cfg.cloudwatch.namespace, cw.namespace,
        "the example publishes where the template reads"
    );
    assert!(
        !cfg.cloudwatch.per_instance,
        "per_instance changes the dimension set the template reads"
    );
    assert!(
        cfg.cloudwatch.dimensions.is_empty(),
        "extra dimensions change the dimension set the template reads"
    );
    let grace = cfg.worker.shutdown_grace;

    let t = Template::load();
    assert!(Duration::from_secs(t.number("DrainGraceSeconds")) >= grace + DRAIN_MARGIN);
    assert_eq!(
        Duration::from_secs(t.number("WorkerShutdownGraceSeconds")),
        grace
    );

    for name in ["jobfleet-worker.service", "jobfleet-scheduler.service"] {
        let unit = read(&format!("systemd/{name}"));
        assert_eq!(
            unit_value(&unit, "KillSignal").as_deref(),
            Some("SIGTERM"),
            "{name}"
        );
        assert_eq!(
            unit_value(&unit, "Restart").as_deref(),
            Some("on-failure"),
            "{name}"
        );
        assert!(
            unit_value(&unit, "EnvironmentFile").is_some(),
            "{name}: secrets come from an env file"
        );
        let stop =
            unit_value(&unit, "TimeoutStopSec").unwrap_or_else(|| panic!("{name}: TimeoutStopSec"));
        let stop =
            humantime::parse_duration(&stop).unwrap_or_else(|e| panic!("{name}: {stop}: {e}"));
        assert!(
            stop >= grace + DRAIN_MARGIN,
            "{name}: TimeoutStopSec {stop:?} < {grace:?} + {DRAIN_MARGIN:?}"
        );
    }

    let k8s = read("k8s/jobfleet.yaml");
    let periods: Vec<u64> = k8s
        .lines()
        .filter_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    // The first is the worker Deployment's.
    assert!(
        Duration::from_secs(periods[0]) >= grace + DRAIN_MARGIN,
        "worker terminationGracePeriodSeconds {}",
        periods[0]
    );
    let in_k8s = k8s
        .lines()
        .find_map(|l| l.trim().strip_prefix("shutdown_grace = "))
        .expect("the ConfigMap sets shutdown_grace");
    let in_k8s = humantime::parse_duration(in_k8s.trim_matches('"')).unwrap();
    assert!(Duration::from_secs(periods[0]) >= in_k8s + DRAIN_MARGIN);
}

#[test]
fn keda_triggers_read_published_metrics() {
    let k8s = read("k8s/jobfleet.yaml");
    let cw = CloudWatchConfig::default();
    let defaults = Config::default();
    // Each aws-cloudwatch trigger's metadata, as flat `key: "value"` lines.
    let mut triggers: Vec<std::collections::HashMap<String, String>> = Vec::new();
    for line in k8s.lines() {
        let l = line.trim();
        if l.starts_with("- type: aws-cloudwatch") {
            triggers.push(Default::default());
        } else if let (Some(t), Some((k, v))) = (triggers.last_mut(), l.split_once(": ")) {
            t.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
    }
    assert!(!triggers.is_empty(), "no aws-cloudwatch trigger");
    let published: BTreeSet<String> = cloudwatch::dimension_names(&cw).into_iter().collect();
    let mut queues = BTreeSet::new();
    for t in &triggers {
        assert_eq!(t["namespace"], cw.namespace);
        let spec = cloudwatch::metric(&t["metricName"]).expect("a published metric");
        assert_eq!(spec.name, cloudwatch::BACKLOG);
        assert_eq!(t["metricStat"], spec.aggregation.statistic());
        let dims: BTreeSet<String> = t["dimensionName"].split(';').map(str::to_owned).collect();
        assert_eq!(dims, published);
        queues.insert(t["dimensionValue"].clone());
    }
    assert_eq!(
        queues,
        defaults.queues.keys().cloned().collect::<BTreeSet<_>>()
    );
}
