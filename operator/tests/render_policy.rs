//! The NetworkPolicy renderer: rendered tables are valid nftables (our own
//! validator and `nft -c -f`), re-renders after cluster changes diff into the
//! small batches the design promises, and chains are shared by content.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Command;

use kube_nft::cluster::{Cluster, Object};
use kube_nft::policy::compile_node;
use kube_nft::render::render_policy;
use kube_nft_crds::ir::{
    AddressSet, AddressSetElement, IrPeer, IrPort, IrRule, NodePolicy, PodPolicy, Protocol,
};
use nft::diff::diff;
use nft::render::{render_text, validate};
use nft::{Batch, ElemData, KeyPart, Op, Table, Value, Verdict};
use serde_json::{json, Value as Json};

const NODE: &str = "node-1";

// ---------------------------------------------------------------------------
// Cluster builders
// ---------------------------------------------------------------------------

fn pod(ns: &str, name: &str, labels: Json, ips: &[&str], ports: &[(&str, &str, u16)]) -> Json {
    let ports: Vec<Json> = ports
        .iter()
        .map(|(n, p, c)| json!({"name": n, "protocol": p, "containerPort": c}))
        .collect();
    let pod_ips: Vec<Json> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": pod_ips}
    })
}

fn namespace(name: &str, labels: Json) -> Json {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn policy(ns: &str, name: &str, spec: Json) -> Json {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    })
}

fn node() -> Json {
    json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "192.168.0.1"},
            {"type": "InternalIP", "address": "fd00::1"}
        ]}
    })
}

fn object(o: &Json) -> Object {
    let o = o.clone();
    match o["kind"].as_str().unwrap() {
        "Pod" => Object::Pod(serde_json::from_value(o).unwrap()),
        "Namespace" => Object::Namespace(serde_json::from_value(o).unwrap()),
        "NetworkPolicy" => Object::NetworkPolicy(serde_json::from_value(o).unwrap()),
        "Node" => Object::Node(serde_json::from_value(o).unwrap()),
        k => panic!("kind {k}"),
    }
}

fn cluster(objects: &[Json]) -> Cluster {
    let mut c = Cluster::new();
    c.insert(object(&node())).unwrap();
    for o in objects {
        c.insert(object(o)).unwrap();
    }
    c
}

/// Compile the node's share and render it, checking determinism on the way.
fn render(c: &Cluster) -> Table {
    let ir = compile_node(c, NODE);
    let share = ir.nodes.get(NODE).cloned().unwrap_or_default();
    let t = render_policy(&share, &ir.address_sets);
    assert_eq!(
        t,
        render_policy(&share, &ir.address_sets),
        "not deterministic"
    );
    t
}

fn deny_all(ns: &str) -> Json {
    policy(
        ns,
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )
}

fn allow_web_from_clients(ns: &str) -> Json {
    policy(
        ns,
        "allow-web",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                "ports": [{"port": 80}, {"port": 8000, "endPort": 8080}]
            }]
        }),
    )
}

fn allow_dns_egress(ns: &str) -> Json {
    policy(
        ns,
        "allow-dns",
        json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]
        }),
    )
}

/// demo: web (selected by allow-web), client, other; deny-all in demo.
fn base_objects() -> Vec<Json> {
    vec![
        namespace("demo", json!({"team": "a"})),
        namespace("mon", json!({"team": "b"})),
        pod(
            "demo",
            "web",
            json!({"app": "web"}),
            &["10.0.1.10"],
            &[("http", "TCP", 80)],
        ),
        pod(
            "demo",
            "client",
            json!({"role": "client"}),
            &["10.0.1.11"],
            &[],
        ),
        pod("demo", "other", json!({}), &["10.0.1.12"], &[]),
        pod("mon", "prom", json!({"app": "prom"}), &["10.0.1.20"], &[]),
        deny_all("demo"),
        allow_web_from_clients("demo"),
        allow_dns_egress("demo"),
    ]
}

// ---------------------------------------------------------------------------
// Validity
// ---------------------------------------------------------------------------

/// Our validator finds nothing and, when the `nft` CLI is installed, `nft -c`
/// (check only: nothing is committed) accepts the text.
fn assert_loads(t: &Table) {
    let problems = validate(t);
    assert!(problems.is_empty(), "{problems:?}");
    let text = render_text(t);
    if Command::new("nft").arg("--version").output().is_err() {
        eprintln!("nft CLI not installed: skipping `nft -c -f`");
        return;
    }
    let mut file = tempfile();
    file.1.write_all(text.as_bytes()).unwrap();
    let out = Command::new("nft")
        .args(["-c", "-f"])
        .arg(&file.0)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file.0);
    assert!(
        out.status.success(),
        "nft -c rejected the table:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tempfile() -> (std::path::PathBuf, std::fs::File) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "kube-nft-render-{}-{}.nft",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::File::create(&path).unwrap();
    (path, f)
}

fn chain_names(t: &Table) -> BTreeSet<String> {
    t.chains.keys().cloned().collect()
}

fn policy_chains(t: &Table) -> Vec<&nft::Chain> {
    t.chains.values().filter(|c| c.base.is_none()).collect()
}

/// The namespace chain the class map `map` (`<dir>-class-<fam>`) sends `ip`
/// to: its class id, then that id's element in `<dir>-chains`.
fn chain_of(t: &Table, map: &str, ip: &str) -> Option<String> {
    let key = vec![KeyPart::Value(ip_value(ip))];
    let class = match &t.sets[map].elements.get(&key)?.data {
        Some(ElemData::Values(v)) => match v.as_slice() {
            [Value::Mark(c)] => *c,
            other => panic!("unexpected class data {other:?}"),
        },
        other => panic!("unexpected map data {other:?}"),
    };
    let dir = map.split("-class-").next().unwrap();
    let chains = &t.sets[&format!("{dir}-chains")];
    match &chains.elements[&vec![KeyPart::Value(Value::Mark(class))]].data {
        Some(ElemData::Verdict(Verdict::Jump(c))) => Some(c.clone()),
        other => panic!("unexpected chains data {other:?}"),
    }
}

/// The class id of namespace chain `chain`: the key of its `<dir>-chains`
/// element.
fn chain_class(t: &Table, chain: &str) -> u32 {
    let map = if chain.starts_with("in-") {
        "ingress-chains"
    } else {
        "egress-chains"
    };
    let found: Vec<u32> = t.sets[map]
        .elements
        .iter()
        .filter(|(_, v)| v.data == Some(ElemData::Verdict(Verdict::Jump(chain.into()))))
        .map(|(k, _)| match k.as_slice() {
            [KeyPart::Value(Value::Mark(c))] => *c,
            other => panic!("unexpected chains key {other:?}"),
        })
        .collect();
    assert_eq!(found.len(), 1, "{chain}: {found:?}");
    found[0]
}

/// The policy chains (`in`/`eg` by `prefix`) whose selection sets hold `ip`.
fn policy_chains_of(t: &Table, prefix: &str, ip: &str) -> BTreeSet<String> {
    let key = vec![KeyPart::Value(ip_value(ip))];
    t.sets
        .iter()
        .filter(|(_, s)| s.elements.contains_key(&key))
        .filter_map(|(name, _)| name.strip_prefix("sel-"))
        .filter(|rest| rest.starts_with(&format!("{prefix}-")))
        .map(|rest| rest[..rest.len() - 3].to_string())
        .collect()
}

/// The one policy chain of `ip` in direction `prefix`.
fn policy_chain_of(t: &Table, prefix: &str, ip: &str) -> String {
    let chains = policy_chains_of(t, prefix, ip);
    assert_eq!(chains.len(), 1, "{ip}: {chains:?}");
    chains.into_iter().next().unwrap()
}

fn rendered_rules(t: &Table, chain: &str) -> Vec<String> {
    t.chains[chain]
        .rules
        .iter()
        .map(|r| nft::render::render_rule(nft::Family::Inet, r))
        .collect()
}

fn ip_value(ip: &str) -> Value {
    match ip.parse().unwrap() {
        std::net::IpAddr::V4(a) => Value::Ipv4(a),
        std::net::IpAddr::V6(a) => Value::Ipv6(a),
    }
}

#[test]
fn empty_node_renders_the_skeleton() {
    let t = render(&cluster(&[]));
    assert_loads(&t);
    assert_eq!(
        chain_names(&t),
        ["forward", "forward-egress", "input"]
            .map(String::from)
            .into()
    );
    for m in [
        "ingress-class-v4",
        "ingress-class-v6",
        "egress-class-v4",
        "egress-class-v6",
        "ingress-chains",
        "egress-chains",
    ] {
        assert!(t.sets[m].elements.is_empty());
    }
    let text = render_text(&t);
    assert!(text.contains("ip saddr != @node-addrs-v4 ct mark set ip daddr map @ingress-class-v4"));
    assert!(text.contains("ct mark vmap @ingress-chains"));
    assert!(text.contains("ct mark set ip6 saddr map @egress-class-v6"));
    assert!(text.contains("ct mark vmap @egress-chains"));
    assert!(text.contains("elements = { 192.168.0.1 }"));
}

#[test]
fn default_deny_and_allow() {
    let t = render(&cluster(&base_objects()));
    assert_loads(&t);
    let text = render_text(&t);
    // Every isolated demo pod is dispatched to the namespace chain.
    for ip in ["10.0.1.10", "10.0.1.11", "10.0.1.12"] {
        assert_eq!(
            chain_of(&t, "ingress-class-v4", ip).as_deref(),
            Some("in-ns-demo")
        );
        assert_eq!(
            chain_of(&t, "egress-class-v4", ip).as_deref(),
            Some("eg-ns-demo")
        );
    }
    // web: deny-all + allow-web on ingress, so one policy chain; client and
    // other: deny-all only, which has no rule and so no chain.
    let web = policy_chain_of(&t, "in", "10.0.1.10");
    assert!(policy_chains_of(&t, "in", "10.0.1.11").is_empty());
    assert!(policy_chains_of(&t, "in", "10.0.1.12").is_empty());
    // mon/prom is not isolated.
    assert_eq!(chain_of(&t, "ingress-class-v4", "10.0.1.20"), None);
    assert_eq!(chain_of(&t, "egress-class-v4", "10.0.1.20"), None);
    assert!(policy_chains_of(&t, "in", "10.0.1.20").is_empty());
    // Egress: all demo pods share one chain allowing DNS.
    let eg = policy_chain_of(&t, "eg", "10.0.1.10");
    assert_eq!(policy_chain_of(&t, "eg", "10.0.1.11"), eg);
    assert_eq!(policy_chains(&t).len(), 4, "{text}");

    let web_chain = &t.chains[&web];
    assert_eq!(
        web_chain.comment.as_deref(),
        Some("ingress: NetworkPolicy demo/allow-web")
    );
    // The pod's class id, and that id's one verdict element naming the
    // namespace chain.
    let class = chain_class(&t, "in-ns-demo");
    assert!(
        text.contains(&format!("comment \"demo/web\" : {class:#010x}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{class:#010x} comment \"in-ns-demo\" : jump in-ns-demo"
        )),
        "{text}"
    );
    // The namespace chain: one guard per policy chain, then the drop.
    assert_eq!(
        rendered_rules(&t, "in-ns-demo"),
        [
            format!("ip daddr @sel-{web}-v4 jump {web} comment \"NetworkPolicy demo/allow-web\""),
            "counter drop comment \"kube-nft: ingress not allowed by any NetworkPolicy\""
                .to_string()
        ]
    );
    assert_eq!(
        t.sets[&format!("sel-{web}-v4")].comment.as_deref(),
        Some("local pods selected by NetworkPolicy demo/allow-web")
    );
    let rule = &rendered_rules(&t, &web)[0];
    assert!(
        rule.starts_with("ip saddr @as-peer-")
            && rule.contains("-v4 meta l4proto . th dport @ports-")
            && rule.ends_with("accept comment \"NetworkPolicy demo/allow-web ingress[0]\""),
        "{rule}"
    );
    assert!(
        text.contains("elements = { tcp . 80, tcp . 8000-8080 }"),
        "{text}"
    );
    // Egress is judged in its own base chain, so its allow rules accept too.
    let eg_text = rendered_rules(&t, &eg);
    assert!(
        eg_text[0].starts_with("meta l4proto . th dport @ports-")
            && eg_text[0].contains(" accept "),
        "{eg_text:?}"
    );
    assert!(text.contains("hook forward priority -1"), "{text}");
}

#[test]
fn allow_from_namespace_ipblock_except_sctp_and_ranges() {
    let mut objects = base_objects();
    objects.push(policy(
        "demo",
        "mixed",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]},
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.0.1.0/24"]}}],
                 "ports": [{"port": 9000, "endPort": 9100, "protocol": "SCTP"}]},
                {"from": [{"ipBlock": {"cidr": "fd00::/8", "except": ["fd00:1::/32"]}}],
                 "ports": [{"protocol": "UDP"}]}
            ]
        }),
    ));
    let t = render(&cluster(&objects));
    assert_loads(&t);
    let text = render_text(&t);
    assert!(
        text.contains("meta l4proto sctp th dport 9000-9100 accept"),
        "{text}"
    );
    assert!(
        text.contains("10.0.0.0/24, 10.0.2.0-10.0.255.255, 10.2.0.0-10.255.255.255"),
        "{text}"
    );
    // The pod is v4-only: the v6 ipBlock yields no rule and no set.
    assert!(!text.contains("fd00::/8"), "{text}");
    assert!(!text.contains("meta l4proto udp accept"), "{text}");
    // From namespace team=b: mon/prom's address.
    let ns_set = t
        .sets
        .values()
        .find(|s| s.comment.as_deref().is_some_and(|c| c.contains("team")))
        .expect("a namespace-selector set");
    assert_eq!(ns_set.elements.len(), 1);
}

#[test]
fn named_ports_and_ipv6() {
    let objects = vec![
        pod(
            "demo",
            "web",
            json!({"app": "web"}),
            &["10.0.1.10", "fd00:10::10"],
            &[("http", "TCP", 8080), ("metrics", "TCP", 9090)],
        ),
        pod(
            "demo",
            "web2",
            json!({"app": "web"}),
            &["10.0.1.13", "fd00:10::13"],
            &[("http", "TCP", 80), ("metrics", "TCP", 9090)],
        ),
        pod(
            "demo",
            "client",
            json!({"role": "client"}),
            &["10.0.1.11", "fd00:10::11"],
            &[],
        ),
        policy(
            "demo",
            "web-http",
            json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"ports": [{"port": "http"}]}]
            }),
        ),
        policy(
            "demo",
            "client-out",
            json!({
                "podSelector": {"matchLabels": {"role": "client"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                            "ports": [{"port": "metrics"}, {"port": 443}]}]
            }),
        ),
    ];
    let t = render(&cluster(&objects));
    assert_loads(&t);
    let text = render_text(&t);
    // Ingress named ports resolve per pod through a set keyed by the pod
    // itself: web (http=8080) and web2 (http=80) share one policy chain,
    // which serves both addresses of each.
    let web = policy_chain_of(&t, "in", "10.0.1.10");
    assert_eq!(policy_chain_of(&t, "in", "10.0.1.13"), web);
    assert_eq!(policy_chain_of(&t, "in", "fd00:10::10"), web);
    assert_eq!(
        chain_of(&t, "ingress-class-v6", "fd00:10::10").as_deref(),
        Some("in-ns-demo")
    );
    let rules = rendered_rules(&t, &web);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(
        rules[0].starts_with("ip daddr . meta l4proto . th dport @np-")
            && rules[1].starts_with("ip6 daddr . meta l4proto . th dport @np-"),
        "{rules:?}"
    );
    for element in [
        "10.0.1.10 . tcp . 8080 comment \"demo/web\"",
        "10.0.1.13 . tcp . 80 comment \"demo/web2\"",
        "fd00:10::13 . tcp . 80 comment \"demo/web2\"",
    ] {
        assert!(text.contains(element), "{element}: {text}");
    }
    // Egress named port: an (address, proto, port) set per family.
    assert!(
        text.contains("ip daddr . meta l4proto . th dport @asp-ports-"),
        "{text}"
    );
    assert!(
        text.contains("ip6 daddr . meta l4proto . th dport @asp-ports-"),
        "{text}"
    );
    assert!(text.contains("fd00:10::10 . tcp . 9090"), "{text}");
    assert!(text.contains("ip6 daddr @as-peer-"), "{text}");
    // A dual-stack pod has one chain per policy, guarded for both families.
    let client = policy_chain_of(&t, "eg", "10.0.1.11");
    assert_eq!(policy_chain_of(&t, "eg", "fd00:10::11"), client);
    let guards = rendered_rules(&t, "eg-ns-demo");
    assert!(
        guards
            .iter()
            .any(|g| g.starts_with(&format!("ip saddr @sel-{client}-v4 jump")))
            && guards
                .iter()
                .any(|g| g.starts_with(&format!("ip6 saddr @sel-{client}-v6 jump"))),
        "{guards:?}"
    );
}

#[test]
fn many_pods_share_chains() {
    let mut objects = vec![
        deny_all("demo"),
        allow_web_from_clients("demo"),
        allow_dns_egress("demo"),
    ];
    let small = render(&cluster(&objects));
    for i in 0..1000u32 {
        objects.push(pod(
            "demo",
            &format!("web-{i}"),
            json!({"app": "web", "role": "client"}),
            &[&format!("10.1.{}.{}", i / 250, i % 250 + 1)],
            &[],
        ));
    }
    let t = render(&cluster(&objects));
    assert_loads(&t);
    // One namespace chain and one policy chain per direction for 1,000 pods,
    // plus the base chains.
    assert_eq!(t.chains.len(), 7, "{:?}", chain_names(&t));
    assert_eq!(small.chains.len(), 3);
    assert_eq!(t.sets["ingress-class-v4"].elements.len(), 1000);
    assert_eq!(t.sets["egress-class-v4"].elements.len(), 1000);
    let web = policy_chain_of(&t, "in", "10.1.0.1");
    assert_eq!(t.sets[&format!("sel-{web}-v4")].elements.len(), 1000);
}

// ---------------------------------------------------------------------------
// Incremental changes: exact batches
// ---------------------------------------------------------------------------

fn elem(ip: &str) -> Vec<KeyPart> {
    vec![KeyPart::Value(ip_value(ip))]
}

/// The one set named `<prefix>…` whose comment contains `needle`.
fn set_named(t: &Table, prefix: &str, needle: &str) -> String {
    let found: Vec<&String> = t
        .sets
        .values()
        .filter(|s| s.name.starts_with(prefix))
        .filter(|s| s.comment.as_deref().is_some_and(|c| c.contains(needle)))
        .map(|s| &s.name)
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

fn added(t: &Table, set: &str, ip: &str) -> Op {
    let key = elem(ip);
    Op::AddElements {
        set: set.into(),
        elements: vec![(key.clone(), t.sets[set].elements[&key].clone())],
    }
}

fn deleted(set: &str, ip: &str) -> Op {
    Op::DeleteElements {
        set: set.into(),
        keys: vec![elem(ip)],
    }
}

fn batch(ops: Vec<Op>) -> Batch {
    Batch {
        family: nft::Family::Inet,
        table: "kube-nft".into(),
        ops,
    }
}

#[test]
fn rerender_without_change_is_empty() {
    let t = render(&cluster(&base_objects()));
    assert!(diff(Some(&t), &t).is_empty());
}

#[test]
fn pod_added_adds_elements_only() {
    let old = render(&cluster(&base_objects()));
    let mut objects = base_objects();
    objects.push(pod(
        "demo",
        "client2",
        json!({"role": "client"}),
        &["10.0.1.14"],
        &[],
    ));
    let new = render(&cluster(&objects));
    let peers = set_named(&new, "as-peer-", "role=client");
    let dns = format!("sel-{}-v4", policy_chain_of(&new, "eg", "10.0.1.14"));
    assert_eq!(
        diff(Some(&old), &new),
        batch(vec![
            added(&new, &peers, "10.0.1.14"),
            added(&new, "egress-class-v4", "10.0.1.14"),
            added(&new, "ingress-class-v4", "10.0.1.14"),
            added(&new, &dns, "10.0.1.14"),
        ])
    );
    // The new pod joined existing chains.
    assert_eq!(chain_names(&old), chain_names(&new));
}

#[test]
fn pod_relabelled_into_and_out_of_selectors() {
    // demo/other → role=client: joins the client peer set; its chains (deny-all
    // ingress, dns egress) stay the same.
    let old = render(&cluster(&base_objects()));
    let relabel = |labels: Json| {
        let mut objects = base_objects();
        objects[4] = pod("demo", "other", labels, &["10.0.1.12"], &[]);
        render(&cluster(&objects))
    };
    let new = relabel(json!({"role": "client"}));
    let peers = set_named(&new, "as-peer-", "role=client");
    assert_eq!(
        diff(Some(&old), &new),
        batch(vec![added(&new, &peers, "10.0.1.12")])
    );
    assert_eq!(
        diff(Some(&new), &old),
        batch(vec![deleted(&peers, "10.0.1.12")])
    );

    // demo/other → app=web: now selected by allow-web: it joins the selection
    // set of the (existing) allow-web chain. One element, no rule, no verdict.
    let web = relabel(json!({"app": "web"}));
    let web_chain = policy_chain_of(&old, "in", "10.0.1.10");
    assert_eq!(policy_chain_of(&web, "in", "10.0.1.12"), web_chain);
    let sel = format!("sel-{web_chain}-v4");
    assert_eq!(
        diff(Some(&old), &web),
        batch(vec![added(&web, &sel, "10.0.1.12")])
    );
    assert_eq!(
        diff(Some(&web), &old),
        batch(vec![deleted(&sel, "10.0.1.12")])
    );
}

#[test]
fn namespace_relabel_changes_set_elements_only() {
    let mut objects = base_objects();
    objects.push(policy(
        "demo",
        "from-team-b",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]
        }),
    ));
    let old = render(&cluster(&objects));
    objects[0] = namespace("demo", json!({"team": "b"})); // demo joins team b
    let new = render(&cluster(&objects));
    let set = set_named(&new, "as-peer-", "team=b");
    let mut adds = Vec::new();
    for ip in ["10.0.1.10", "10.0.1.11", "10.0.1.12"] {
        let key = elem(ip);
        adds.push((key.clone(), new.sets[&set].elements[&key].clone()));
    }
    assert_eq!(
        diff(Some(&old), &new),
        batch(vec![Op::AddElements {
            set,
            elements: adds
        }])
    );
}

/// Only chains that are new or gone appear in the batch, plus namespace
/// chains, whose guard list is rewritten whole; other surviving chains are
/// neither flushed, deleted nor re-filled, and no pod changes class.
fn assert_only_changed_chains(old: &Table, new: &Table) -> (BTreeSet<String>, BTreeSet<String>) {
    let b = diff(Some(old), new);
    let (o, n) = (chain_names(old), chain_names(new));
    let gone: BTreeSet<String> = o.difference(&n).cloned().collect();
    let came: BTreeSet<String> = n.difference(&o).cloned().collect();
    let ns = |c: &str| c.starts_with("in-ns-") || c.starts_with("eg-ns-");
    for op in &b.ops {
        match op {
            Op::FlushChain(c) => assert!(gone.contains(c) || ns(c), "{op:?}"),
            Op::DeleteChain(c) => assert!(gone.contains(c), "{op:?}"),
            Op::AddChain(c) => assert!(came.contains(&c.name), "{op:?}"),
            Op::AddRule { chain, .. } => assert!(came.contains(chain) || ns(chain), "{op:?}"),
            Op::AddTable { .. } | Op::DeleteTable => panic!("{op:?}"),
            Op::AddSet(_) | Op::DeleteSet(_) | Op::FlushSet(_) => {}
            Op::AddElements { set, .. } | Op::DeleteElements { set, .. } => {
                assert!(!set.contains("-class-"), "{op:?}")
            }
        }
    }
    for c in &gone {
        assert!(
            b.ops.contains(&Op::DeleteChain(c.clone())),
            "{c} not deleted"
        );
    }
    (gone, came)
}

fn set_ops(b: &Batch) -> BTreeSet<String> {
    b.ops
        .iter()
        .filter_map(|op| match op {
            Op::AddSet(s) => Some(format!("add {}", s.name)),
            Op::DeleteSet(s) => Some(format!("delete {s}")),
            _ => None,
        })
        .collect()
}

#[test]
fn policy_created_changed_deleted_touch_only_affected_chains() {
    let old = render(&cluster(&base_objects()));
    let eg = policy_chain_of(&old, "eg", "10.0.1.10");
    let web_in = policy_chain_of(&old, "in", "10.0.1.10");

    // Created: web may also be reached from mon. One policy chain comes, with
    // its peer and selection sets; the namespace chain gets its guard; no
    // other chain changes and no pod changes class.
    let mut objects = base_objects();
    objects.push(policy(
        "demo",
        "from-mon",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]
        }),
    ));
    let created = render(&cluster(&objects));
    let (gone, came) = assert_only_changed_chains(&old, &created);
    assert!(gone.is_empty(), "{gone:?}");
    assert_eq!(came.len(), 1);
    let from_mon = came.iter().next().unwrap().clone();
    assert_eq!(
        created.chains[&from_mon].comment.as_deref(),
        Some("ingress: NetworkPolicy demo/from-mon")
    );
    assert_eq!(
        policy_chains_of(&created, "in", "10.0.1.10"),
        [web_in.clone(), from_mon.clone()].into()
    );
    let b = diff(Some(&old), &created);
    let peers = set_named(&created, "as-peer-", "team=b");
    assert_eq!(
        set_ops(&b),
        [format!("add {peers}"), format!("add sel-{from_mon}-v4")].into()
    );
    assert!(b.ops.contains(&Op::FlushChain("in-ns-demo".into())));
    assert_eq!(rendered_rules(&created, "in-ns-demo").len(), 3);

    // Changed: allow-web's port list changes → a new ports set and a new web
    // chain with its selection set; the old ones go.
    let mut objects = base_objects();
    objects[7] = policy(
        "demo",
        "allow-web",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                         "ports": [{"port": 443}, {"port": 8443}]}]
        }),
    );
    let changed = render(&cluster(&objects));
    let (gone, came) = assert_only_changed_chains(&old, &changed);
    assert_eq!(gone, [web_in.clone()].into());
    assert_eq!(came.len(), 1);
    assert!(changed.chains.contains_key(&eg));
    let b = diff(Some(&old), &changed);
    let ops = set_ops(&b);
    assert_eq!(ops.len(), 4, "{ops:?}"); // ports and selection sets replaced
    assert!(ops.contains(&format!("delete sel-{web_in}-v4")), "{ops:?}");

    // Deleted: allow-dns goes: the demo pods stay in their namespace chain,
    // which now drops all egress; the dns chain and its sets go.
    let mut objects = base_objects();
    objects.remove(8);
    let removed = render(&cluster(&objects));
    let (gone, came) = assert_only_changed_chains(&old, &removed);
    assert_eq!(gone, [eg].into());
    assert!(came.is_empty(), "{came:?}");
    assert!(removed.chains.contains_key(&web_in));
    assert_eq!(rendered_rules(&removed, "eg-ns-demo").len(), 1);
}

// ---------------------------------------------------------------------------
// IR built directly: shapes the compiler does not produce today
// ---------------------------------------------------------------------------

fn ir_pod(name: &str, ips: &[&str], ingress: Vec<IrRule>) -> PodPolicy {
    PodPolicy {
        namespace: "ns".into(),
        name: name.into(),
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        ingress_isolated: true,
        egress_isolated: false,
        ingress,
        egress: Vec::new(),
    }
}

fn rule(peers: Vec<IrPeer>, ports: Vec<IrPort>) -> IrRule {
    IrRule {
        policy: "ns/p".into(),
        rule_index: 0,
        peers,
        ports,
        named_ports: Vec::new(),
    }
}

fn port(protocol: Protocol, port: Option<u16>, end_port: Option<u16>) -> IrPort {
    IrPort {
        protocol,
        port,
        end_port,
    }
}

#[test]
fn ir_edge_cases() {
    let any = || vec![IrPeer::Any];
    let node = NodePolicy {
        node: NODE.into(),
        node_addresses: vec!["192.168.0.1".parse().unwrap()],
        pods: vec![
            // Overlapping ports merge; a whole protocol needs no port match.
            ir_pod(
                "a",
                &["10.0.0.1"],
                vec![
                    rule(
                        any(),
                        vec![
                            port(Protocol::Tcp, Some(80), None),
                            port(Protocol::Tcp, Some(70), Some(90)),
                            port(Protocol::Udp, None, None),
                        ],
                    ),
                    rule(any(), vec![port(Protocol::Sctp, None, None)]),
                ],
            ),
            // An empty range matches nothing; except covering all: no rule;
            // a missing address set renders empty.
            ir_pod(
                "b",
                &["10.0.0.2"],
                vec![
                    rule(any(), vec![port(Protocol::Tcp, Some(90), Some(80))]),
                    rule(
                        vec![IrPeer::Cidr {
                            cidr: "10.0.0.0/8".into(),
                            except: vec!["0.0.0.0/0".into()],
                        }],
                        vec![],
                    ),
                    rule(
                        vec![IrPeer::AddressSet {
                            name: "missing".into(),
                        }],
                        vec![],
                    ),
                ],
            ),
            // IPv6-only pod, weird IR set name.
            ir_pod(
                "c",
                &["fd00::2"],
                vec![rule(
                    vec![IrPeer::AddressSet {
                        name: "odd name".into(),
                    }],
                    vec![],
                )],
            ),
        ],
    };
    let mut sets = std::collections::BTreeMap::new();
    sets.insert(
        "odd name".to_string(),
        AddressSet {
            name: "odd name".into(),
            selector: "odd \"selector\"".into(),
            elements: vec![
                AddressSetElement {
                    ip: "10.9.9.9".parse().unwrap(),
                    protocol: None,
                    port: None,
                },
                AddressSetElement {
                    ip: "fd00::9".parse().unwrap(),
                    protocol: None,
                    port: None,
                },
            ],
        },
    );
    let t = render_policy(&node, &sets);
    assert_loads(&t);
    let text = render_text(&t);
    assert!(
        text.contains("elements = { tcp . 70-90, udp . 0-65535 }"),
        "{text}"
    );
    assert!(text.contains("meta l4proto sctp accept"), "{text}");
    // b: the empty range and the except-everything block render no rule.
    let rules = rendered_rules(&t, &policy_chain_of(&t, "in", "10.0.0.2"));
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert!(
        rules[0].starts_with("ip saddr @as-missing-v4 accept"),
        "{rules:?}"
    );
    assert!(t.sets["as-missing-v4"].elements.is_empty());
    let c = policy_chain_of(&t, "in", "fd00::2");
    let c_rule = nft::render::render_rule(nft::Family::Inet, &t.chains[&c].rules[0]);
    assert!(c_rule.starts_with("ip6 saddr @asx-"), "{c_rule}");
    // The v6-only pod's chain uses only the v6 half of the set.
    assert!(!text.contains("ip saddr @asx-"), "{text}");
    let odd: Vec<&String> = t.sets.keys().filter(|n| n.starts_with("asx-")).collect();
    assert_eq!(odd.len(), 1, "{odd:?}");
    assert!(odd[0].ends_with("-v6"));
    assert!(text.contains("comment \"odd 'selector'\""), "{text}");
}
