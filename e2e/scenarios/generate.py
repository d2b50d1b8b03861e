#!/usr/bin/env python3
"""Writes the NetworkPolicy conformance scenarios (e2e/scenarios/*.yaml) and the
base model (e2e/scenarios/base/). Run it after editing; commit its output.

The model and the cases mirror upstream Kubernetes' netpol e2e suite
(test/e2e/network/netpol: namespaces x, y, z labelled `ns: <name>`; pods a, b, c
labelled `pod: <name>`; containers `cont-<port>-<proto>` with named ports
`serve-<port>-<proto>` on 80 and 81, TCP and UDP). Expectations are written the
upstream way: start from "everything allowed" (a Reachability) and knock out what
each policy forbids. They are the suite's own reading of the API spec, written
independently of `kube-nft explain`; the offline test in
e2e/tests/netpol_conformance.rs checks every probe against explain.

Each probe's table is emitted as `expect.allow` or `expect.deny`, whichever is
shorter; unlisted pairs get the opposite verdict; a pod probing itself is never
judged and never listed.
"""

import os
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
NAMESPACES = ["x", "y", "z"]
PODS = ["a", "b", "c"]

# node-1: 10.244.1.0/24 + fd00:10:244:1::/64; node-2: 10.244.2.0/24 + fd00:10:244:2::/64.
# Same-node pairs (e.g. x/a-x/c) and cross-node pairs (e.g. x/a-x/b) both exist.
# Every pod is dual-stack; its IPv6 address mirrors its IPv4 one (10.244.1.12 →
# fd00:10:244:1::12), so ipBlocks are deterministic in both families.
PLACEMENT = {
    "x/a": ("node-1", "10.244.1.10", "fd00:10:244:1::10"),
    "x/b": ("node-2", "10.244.2.11", "fd00:10:244:2::11"),
    "x/c": ("node-1", "10.244.1.12", "fd00:10:244:1::12"),
    "y/a": ("node-2", "10.244.2.20", "fd00:10:244:2::20"),
    "y/b": ("node-1", "10.244.1.21", "fd00:10:244:1::21"),
    "y/c": ("node-2", "10.244.2.22", "fd00:10:244:2::22"),
    "z/a": ("node-1", "10.244.1.30", "fd00:10:244:1::30"),
    "z/b": ("node-2", "10.244.2.31", "fd00:10:244:2::31"),
    "z/c": ("node-1", "10.244.1.32", "fd00:10:244:1::32"),
}
ALL = [f"{ns}/{p}" for ns in NAMESPACES for p in PODS]


# --------------------------------------------------------------------------
# manifests

def namespace(name, extra=None):
    labels = {"ns": name, "kubernetes.io/metadata.name": name}
    labels.update(extra or {})
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}}


def node(name, v4, v6):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": v4, "podCIDRs": [v4, v6]}}


def pod(key, labels=None, port_names=None, ip=None, node_name=None):
    """port_names: {(port, proto): name} overriding the upstream `serve-…` names."""
    ns, name = key.split("/")
    node_default, ip_default, ipv6 = PLACEMENT[key]
    ip = ip or ip_default
    containers = []
    for port in (80, 81):
        for proto in ("TCP", "UDP"):
            pname = (port_names or {}).get((port, proto),
                                           f"serve-{port}-{proto.lower()}")
            containers.append({
                "name": f"cont-{port}-{proto.lower()}",
                "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                "ports": [{"containerPort": port, "name": pname, "protocol": proto}],
            })
    ips = [{"ip": ip}] + ([{"ip": ipv6}] if ipv6 else [])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns,
                         "labels": labels if labels is not None else {"pod": name}},
            "spec": {"nodeName": node_name or node_default, "containers": containers},
            "status": {"phase": "Running", "podIP": ip, "podIPs": ips}}


def netpol(key, pod_selector, ingress=None, egress=None, types=None):
    ns, name = key.split("/")
    spec = {"podSelector": pod_selector}
    if types is not None:
        spec["policyTypes"] = types
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def ref(obj):
    m = obj["metadata"]
    r = {"kind": obj["kind"]}
    if "namespace" in m:
        r["namespace"] = m["namespace"]
    r["name"] = m["name"]
    return r


def labels(**kv):
    return {"matchLabels": dict(kv)}


def expr(*reqs):
    out = []
    for key, op, *values in reqs:
        r = {"key": key, "operator": op}
        if values:
            r["values"] = list(values[0])
        out.append(r)
    return {"matchExpressions": out}


# --------------------------------------------------------------------------
# reachability, the upstream way

class Reach:
    def __init__(self, pods=None, default=True):
        self.pods = list(pods or ALL)
        self.m = {(f, t): default for f in self.pods for t in self.pods if f != t}

    def _sel(self, spec):
        """'x/a' → that pod; 'x' → every pod in x; '*' → every pod."""
        if spec == "*":
            return self.pods
        if "/" in spec:
            return [spec] if spec in self.pods else []
        return [p for p in self.pods if p.startswith(spec + "/")]

    def set(self, frm, to, value):
        for f in self._sel(frm):
            for t in self._sel(to):
                if f != t:
                    self.m[(f, t)] = value
        return self

    def where(self, fn, value):
        for (f, t) in self.m:
            if fn(f, t):
                self.m[(f, t)] = value
        return self

    def expect(self):
        allow = [f"{f}->{t}" for (f, t), v in self.m.items() if v]
        deny = [f"{f}->{t}" for (f, t), v in self.m.items() if not v]
        return {"allow": allow} if len(allow) < len(deny) else {"deny": deny}


def probe(proto, port, reach, family=None):
    p = {"protocol": proto, "port": port, "to": "pod"}
    if family:
        p["family"] = family
    p["expect"] = reach.expect()
    return {"probe": p}


def apply(*objs):
    return {"apply": list(objs)}


def delete(*objs):
    return {"delete": [ref(o) for o in objs]}


def R(pods=None):
    return Reach(pods)


# --------------------------------------------------------------------------
# output

class Dumper(yaml.SafeDumper):
    pass


def _str(dumper, data):
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


Dumper.add_representer(str, _str)


def write(path, header, doc):
    text = yaml.dump(doc, Dumper=Dumper, sort_keys=False, default_flow_style=None,
                     width=100)
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.strip().splitlines())
    with open(os.path.join(HERE, path), "w") as f:
        f.write("# Generated by e2e/scenarios/generate.py: edit there, then re-run it.\n")
        f.write(comment)
        f.write(text)


def write_multi(path, header, docs):
    text = "---\n".join(yaml.dump(d, Dumper=Dumper, sort_keys=False, width=100) for d in docs)
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.strip().splitlines())
    with open(os.path.join(HERE, path), "w") as f:
        f.write("# Generated by e2e/scenarios/generate.py: edit there, then re-run it.\n")
        f.write(comment)
        f.write(text)


def scenario(name, header, steps):
    # Steps may carry comments as ("# text", step) pairs flattened into a field.
    write(name, header, {"steps": steps})


# --------------------------------------------------------------------------
# base model

def base():
    write_multi("base/namespaces.yaml", """
Namespaces x, y, z of the upstream netpol model, labelled `ns: <name>` plus the
`kubernetes.io/metadata.name` label the API server adds automatically.
""", [namespace(n) for n in NAMESPACES])
    write_multi("base/nodes.yaml", """
Two dual-stack nodes with fixed pod CIDRs, so every pod IP (and every ipBlock
built from them) is deterministic.
""", [node("node-1", "10.244.1.0/24", "fd00:10:244:1::/64"),
      node("node-2", "10.244.2.0/24", "fd00:10:244:2::/64")])
    write_multi("base/pods.yaml", """
Pods a, b, c in every namespace, labelled `pod: <name>`, one container per
port and protocol (80, 81 x TCP, UDP) with the upstream named ports
serve-80-tcp, serve-80-udp, serve-81-tcp, serve-81-udp.

node-1: x/a 10.244.1.10, x/c 10.244.1.12 + fd00:10:244:1::12, y/b 10.244.1.21,
        z/a 10.244.1.30, z/c 10.244.1.32
node-2: x/b 10.244.2.11, y/a 10.244.2.20 + fd00:10:244:2::20, y/c 10.244.2.22,
        z/b 10.244.2.31
x/c and y/a are dual-stack (IPv4 first, as in an IPv4-primary cluster).
""", [pod(k) for k in ALL])


# --------------------------------------------------------------------------
# scenarios

def default_deny():
    deny_in = netpol("x/default-deny-ingress", {}, types=["Ingress"])
    deny_eg = netpol("x/default-deny-egress", {}, types=["Egress"])
    deny_all = netpol("x/default-deny-all", {}, ingress=[], egress=[], types=["Ingress", "Egress"])
    scenario("default-deny.yaml", """
Upstream: "should support a 'default-deny-ingress' policy", "... 'default-deny-all'
policy", "should deny egress from all pods in a namespace", "should stop enforcing
policies after they are deleted".
Default deny holds for every port and protocol, so probes alternate between them.
""", [
        probe("TCP", 80, R()),  # no policy: everything open
        apply(deny_in),
        probe("TCP", 80, R().set("*", "x", False)),
        probe("UDP", 81, R().set("*", "x", False)),
        delete(deny_in),
        # policyTypes [Egress] and no egress rules: x may send nothing, ingress stays open.
        apply(deny_eg),
        probe("TCP", 81, R().set("x", "*", False)),
        probe("UDP", 80, R().set("x", "*", False)),
        delete(deny_eg),
        apply(deny_all),
        probe("TCP", 80, R().set("x", "*", False).set("*", "x", False)),
        delete(deny_all),
        probe("TCP", 80, R()),  # deleted: open again
    ])


def allow_all():
    deny_in = netpol("x/deny-all-ingress", {}, types=["Ingress"])
    allow_in = netpol("x/allow-all-ingress", {}, ingress=[{}], types=["Ingress"])
    deny_eg = netpol("x/deny-all-egress", {}, types=["Egress"])
    allow_eg = netpol("x/allow-all-egress", {}, egress=[{}], types=["Egress"])
    to_a = netpol("x/allow-all-to-a", labels(pod="a"),
                  ingress=[{"from": [{"podSelector": {}, "namespaceSelector": {}}]}])
    a_from_y_80 = netpol("x/a-from-y-on-80", labels(pod="a"), ingress=[{
        "from": [{"namespaceSelector": labels(ns="y")}],
        "ports": [{"protocol": "TCP", "port": 80}]}])
    a_from_zb = netpol("x/a-from-z-b", labels(pod="a"), ingress=[{
        "from": [{"namespaceSelector": labels(ns="z"), "podSelector": labels(pod="b")}]}])
    scenario("allow-all-and-union.yaml", """
Upstream: "should support allow-all policy", "should enforce multiple ingress
policies with ingress allow-all policy taking precedence", "... egress allow-all
policy taking precedence", "should enforce policy to allow ingress traffic for a
target", "should enforce multiple, stacked policies with overlapping podSelectors".
Policies are additive: a pod's allowed traffic is the union over every policy
selecting it.
""", [
        apply(deny_in, allow_in),  # ingress: [{}] allows everything, deny-all adds nothing
        probe("TCP", 80, R()),
        probe("UDP", 81, R()),
        delete(deny_in, allow_in),
        apply(deny_eg, allow_eg),
        probe("TCP", 81, R()),
        delete(deny_eg, allow_eg),
        apply(deny_in, to_a),  # only x/a opens up again
        probe("TCP", 80, R().set("*", "x/b", False).set("*", "x/c", False)),
        delete(to_a),
        apply(a_from_y_80, a_from_zb),  # union of two narrow policies on x/a
        probe("TCP", 80, R().set("*", "x", False).set("y", "x/a", True).set("z/b", "x/a", True)),
        probe("TCP", 81, R().set("*", "x", False).set("z/b", "x/a", True)),
        probe("UDP", 80, R().set("*", "x", False).set("z/b", "x/a", True)),
    ])


def selectors():
    cases = []

    def case(title, peers, reach, port=("TCP", 80)):
        np = netpol("x/" + title, labels(pod="a"), ingress=[{"from": peers}])
        cases.append(apply(np))
        cases.append(probe(port[0], port[1], reach))
        cases.append(delete(np))

    def only(*sources):
        r = R().set("*", "x/a", False)
        for s in sources:
            r.set(s, "x/a", True)
        return r

    # Upstream "allow traffic from pods within server namespace based on PodSelector".
    case("pod-b", [{"podSelector": labels(pod="b")}], only("x/b"))
    # One peer with both selectors: AND ("... based on PodSelector and NamespaceSelector").
    case("and", [{"namespaceSelector": expr(("ns", "NotIn", ["x"])),
                  "podSelector": labels(pod="b")}], only("y/b", "z/b"))
    # Two peers: OR ("... based on PodSelector or NamespaceSelector").
    case("or", [{"namespaceSelector": expr(("ns", "NotIn", ["x"]))},
                {"podSelector": labels(pod="b")}], only("y", "z", "x/b"))
    # namespaceSelector: {} selects every namespace ("... from pods in all namespaces").
    case("all-namespaces", [{"namespaceSelector": {}}], only("*"))
    case("all-namespaces-pod-c", [{"namespaceSelector": {}, "podSelector": labels(pod="c")}],
         only("x/c", "y/c", "z/c"))
    # podSelector: {} without namespaceSelector: every pod of the policy's namespace only.
    case("all-pods-own-ns", [{"podSelector": {}}], only("x"))
    # podSelector: {} next to a namespaceSelector is the same as podSelector absent.
    case("ns-y-all-pods", [{"namespaceSelector": labels(ns="y"), "podSelector": {}}], only("y"))
    case("ns-y", [{"namespaceSelector": labels(ns="y")}], only("y"))
    # The automatic kubernetes.io/metadata.name label ("... using default ns label").
    case("ns-y-default-label",
         [{"namespaceSelector": labels(**{"kubernetes.io/metadata.name": "y"})}], only("y"))
    # matchExpressions: In ("... PodSelector with MatchExpressions"), on namespaces too.
    case("pod-in-b", [{"podSelector": expr(("pod", "In", ["b"]))}], only("x/b"))
    case("ns-in-y", [{"namespaceSelector": expr(("ns", "In", ["y"]))}], only("y"))
    # Exists + NotIn ("... Multiple PodSelectors and NamespaceSelectors").
    case("ns-exists-pod-notin",
         [{"namespaceSelector": expr(("ns", "Exists")),
           "podSelector": expr(("pod", "NotIn", ["a", "b"]))}], only("x/c", "y/c", "z/c"))
    # DoesNotExist: no namespace carries ns2, so it matches all of them.
    case("ns2-doesnotexist-pod-a",
         [{"namespaceSelector": expr(("ns2", "DoesNotExist")),
           "podSelector": expr(("pod", "In", ["a"]))}], only("y/a", "z/a"))
    # DoesNotExist on a key everyone has matches nothing; matchLabels AND matchExpressions.
    case("nothing-or-b-and-c",
         [{"namespaceSelector": expr(("ns", "DoesNotExist"))},
          {"podSelector": {"matchLabels": {"pod": "b"},
                           "matchExpressions": [{"key": "pod", "operator": "In",
                                                 "values": ["b", "c"]}]}}], only("x/b"))
    # Egress peers: upstream "should enforce egress policy allowing traffic to a server in
    # a different namespace based on PodSelector and NamespaceSelector".
    eg = netpol("x/egress-to-y-b", labels(pod="a"), types=["Egress"], egress=[{
        "to": [{"namespaceSelector": labels(ns="y"), "podSelector": labels(pod="b")}]}])
    cases += [apply(eg), probe("TCP", 80, R().set("x/a", "*", False).set("x/a", "y/b", True)),
              delete(eg)]
    scenario("selectors.yaml", """
Peer selectors, one policy at a time on x/a (ingress unless noted). Upstream: the
PodSelector / NamespaceSelector / MatchExpressions / "default ns label" cases.
""", cases)


def ipblock():
    c1 = netpol("x/a-egress-to-z-b-cidr", labels(pod="a"), types=["Egress"],
                egress=[{"to": [{"ipBlock": {"cidr": "10.244.2.31/32"}}]}])
    c2 = netpol("x/a-egress-cidr-except", labels(pod="a"), types=["Egress"], egress=[{"to": [
        {"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24", "10.244.1.30/32"]}},
        {"ipBlock": {"cidr": "fd00:10:244::/48", "except": ["fd00:10:244:2::/64"]}}]}])
    c3 = netpol("x/a-egress-to-z-a", labels(pod="a"), types=["Egress"],
                egress=[{"to": [{"ipBlock": {"cidr": "10.244.1.30/32"}}]}])
    c4 = netpol("x/b-ingress-cidr-except", labels(pod="b"), ingress=[{"from": [
        {"ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.1.0/28"]}}]}])
    node1_but_za = ["x/c", "y/b", "z/c"]
    r2 = R().set("x/a", "*", False)
    for p in node1_but_za:
        r2.set("x/a", p, True)
    r3 = R().set("x/a", "*", False)
    for p in node1_but_za + ["z/a"]:
        r3.set("x/a", p, True)
    scenario("ipblock.yaml", """
ipBlock peers built from the fixed pod IPs (see base/pods.yaml). Upstream: "should
allow egress access to server in CIDR block", "should enforce except clause while
egress access to server in CIDR block", "should ensure an IP overlapping both
IPBlock.CIDR and IPBlock.Except is allowed".
Dual-stack pods (x/c, y/a) are either inside the blocks in both families or in
neither, so the verdicts hold whichever family a probe uses.
""", [
        apply(c1),
        probe("TCP", 80, R().set("x/a", "*", False).set("x/a", "z/b", True)),
        delete(c1),
        # 10.244.0.0/16 minus node-2's CIDR and z/a: x/a reaches node-1's pods but z/a.
        apply(c2),
        probe("TCP", 80, r2),
        probe("UDP", 81, r2),
        # Another policy allowing z/a's /32 wins over the except of the first (union).
        apply(c3),
        probe("TCP", 80, r3),
        delete(c2, c3),
        # Ingress: from node-1's CIDR except its first 16 addresses (x/a .10, x/c .12).
        apply(c4),
        probe("TCP", 81, R().set("*", "x/b", False).set("y/b", "x/b", True)
              .set("z/a", "x/b", True).set("z/c", "x/b", True)),
    ])


def ports():
    p81_from_y = netpol("x/a-from-y-on-81", labels(pod="a"), ingress=[{
        "from": [{"namespaceSelector": labels(ns="y")}],
        "ports": [{"protocol": "TCP", "port": 81}]}])
    named_in = netpol("x/allow-serve-81-tcp", {}, ingress=[{"ports": [{"port": "serve-81-tcp"}]}])
    named_eg = netpol("x/egress-serve-80-tcp", {}, types=["Egress"],
                      egress=[{"ports": [{"port": "serve-80-tcp"}]}])
    named_from_y = netpol("x/a-from-y-serve-80-tcp", labels(pod="a"), ingress=[{
        "from": [{"namespaceSelector": labels(ns="y")}],
        "ports": [{"protocol": "TCP", "port": "serve-80-tcp"}]}])
    range_a = netpol("x/a-from-y-80-81", labels(pod="a"), ingress=[{
        "from": [{"namespaceSelector": labels(ns="y")}],
        "ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]}])
    range_b = netpol("x/b-81-1024", labels(pod="b"), ingress=[{
        "ports": [{"protocol": "TCP", "port": 81, "endPort": 1024}]}])
    udp_only = netpol("x/a-udp-81-only", labels(pod="a"), ingress=[{
        "ports": [{"protocol": "UDP", "port": 81}]}])
    # y/a calls its port 80/TCP `web`, y/b its port 81/TCP; y/c has no `web`.
    ya = pod("y/a", port_names={(80, "TCP"): "web"})
    yb = pod("y/b", port_names={(81, "TCP"): "web"})
    web_eg = netpol("x/a-egress-to-web", labels(pod="a"), types=["Egress"],
                    egress=[{"ports": [{"port": "web"}]}])
    web_in = netpol("y/ingress-on-web", {}, ingress=[{"ports": [{"protocol": "TCP", "port": "web"}]}])

    def web(port):
        owner = {80: "y/a", 81: "y/b"}[port]
        r = R().set("x/a", "*", False).set("x/a", owner, True).set("*", "y", False)
        return r.set("*", owner, True).set("x/a", owner, True)

    scenario("ports.yaml", """
Ports: numbered, named, ranges (endPort), and protocol. Upstream: "should enforce
policy based on Ports", "should allow ingress access on one named port", "should
allow ingress access from namespace on one named port", "should allow egress access
on one named port", "should not allow access by TCP when a policy specifies only
UDP", and the endPort cases.
""", [
        apply(p81_from_y),
        probe("TCP", 81, R().set("*", "x/a", False).set("y", "x/a", True)),
        probe("TCP", 80, R().set("*", "x/a", False)),
        delete(p81_from_y),
        # A named port resolves at the destination pod; TCP unless the rule says otherwise.
        apply(named_in),
        probe("TCP", 81, R()),
        probe("TCP", 80, R().set("*", "x", False)),
        probe("UDP", 81, R().set("*", "x", False)),
        delete(named_in),
        apply(named_from_y),
        probe("TCP", 80, R().set("*", "x/a", False).set("y", "x/a", True)),
        probe("TCP", 81, R().set("*", "x/a", False)),
        delete(named_from_y),
        apply(named_eg),
        probe("TCP", 80, R()),
        probe("TCP", 81, R().set("x", "*", False)),
        delete(named_eg),
        # endPort: 80-81 from y to x/a; 81-1024 from anywhere to x/b.
        apply(range_a, range_b),
        probe("TCP", 80, R().set("*", "x/a", False).set("y", "x/a", True).set("*", "x/b", False)),
        probe("TCP", 81, R().set("*", "x/a", False).set("y", "x/a", True)),
        probe("UDP", 81, R().set("*", "x/a", False).set("*", "x/b", False)),
        delete(range_a, range_b),
        # UDP only: TCP to the same port stays closed.
        apply(udp_only),
        probe("TCP", 81, R().set("*", "x/a", False)),
        probe("UDP", 81, R()),
        probe("UDP", 80, R().set("*", "x/a", False)),
        delete(udp_only),
        # One name, different numbers per pod: egress from x/a to `web` reaches y/a on 80
        # and y/b on 81; ingress to namespace y on `web` opens y/a:80 and y/b:81 only.
        apply(ya, yb, web_eg, web_in),
        probe("TCP", 80, web(80)),
        probe("TCP", 81, web(81)),
    ])


def sctp():
    deny_in = netpol("x/deny-ingress", {}, types=["Ingress"])
    sctp81 = netpol("x/allow-only-sctp-ingress-on-port-81", labels(pod="a"),
                    ingress=[{"ports": [{"protocol": "SCTP", "port": 81}]}])
    sctp80 = netpol("x/allow-only-sctp-ingress-on-port-80", labels(pod="a"),
                    ingress=[{"ports": [{"protocol": "SCTP", "port": 80}]}])
    scenario("sctp.yaml", """
SCTP in a rule. Upstream: "should not mistakenly treat 'protocol: SCTP' as
'protocol: TCP', even if the plugin doesn't support SCTP" and "should properly
isolate pods that are selected by a policy allowing SCTP, even if the plugin
doesn't support SCTP".
SCTP itself is NOT probed: the lab has no SCTP listener or prober (and this
kernel may lack SCTP sockets altogether; see operator/src/lab/sctp.rs). What is
checked is that an SCTP-only rule opens nothing for TCP or UDP and still isolates
the pods it selects.
""", [
        apply(deny_in, sctp81),
        probe("TCP", 81, R().set("*", "x", False)),
        probe("UDP", 81, R().set("*", "x", False)),
        delete(deny_in, sctp81),
        apply(sctp80),
        probe("TCP", 81, R().set("*", "x/a", False)),
        probe("TCP", 80, R().set("*", "x/a", False)),
    ])


def policy_types():
    eg_all = netpol("x/a-allow-egress", labels(pod="a"), egress=[{}], types=["Egress"])
    in_deny = netpol("x/a-deny-ingress", labels(pod="a"), types=["Ingress"])
    no_types = netpol("y/a-no-policy-types", labels(pod="a"),
                      egress=[{"to": [{"podSelector": {}}]}])
    egress_empty_no_types = netpol("z/egress-empty-list-no-types", {}, egress=[])
    ignored_ingress = netpol("x/b-egress-only-ingress-ignored", labels(pod="b"),
                             types=["Egress"],
                             ingress=[{"from": [{"podSelector": labels(pod="a")}]}],
                             egress=[{"to": [{"namespaceSelector": labels(ns="x")}]}])
    client_side = netpol("x/a-egress-to-y", labels(pod="a"), types=["Egress"],
                         egress=[{"to": [{"namespaceSelector": labels(ns="y")}]}])
    server_allows = netpol("z/allow-all-ingress", {}, ingress=[{}])
    scenario("policy-types.yaml", """
policyTypes and its defaulting; ingress and egress decided independently.
Upstream: "should enforce policies to check ingress and egress policies can be
controlled independently based on PodSelector", "should support denying of egress
traffic on the client side (even if the server explicitly allows this traffic)",
"should work with Ingress, Egress specified together".
""", [
        # Egress allowed to everything, then ingress denied: a->* open, *->a closed.
        apply(eg_all),
        probe("TCP", 80, R()),
        apply(in_deny),
        probe("TCP", 80, R().set("*", "x/a", False)),
        delete(eg_all, in_deny),
        # No policyTypes but egress rules: defaults to [Ingress, Egress]; ingress has
        # no rules, so y/a is closed to everyone and may only reach pods of y.
        apply(no_types),
        probe("TCP", 80, R().set("*", "y/a", False).set("y/a", "*", False)
              .set("y/a", "y", True)),
        delete(no_types),
        # `egress: []` without policyTypes defaults to [Ingress] only: z is closed to
        # ingress, its egress stays open.
        apply(egress_empty_no_types),
        probe("TCP", 81, R().set("*", "z", False)),
        delete(egress_empty_no_types),
        # policyTypes [Egress] with ingress rules: the ingress rules are ignored and x/b
        # is not isolated for ingress; egress only to namespace x.
        apply(ignored_ingress),
        probe("TCP", 80, R().set("x/b", "*", False).set("x/b", "x", True)),
        delete(ignored_ingress),
        # The client's egress policy denies even where the server's ingress allows.
        apply(client_side, server_allows),
        probe("TCP", 80, R().set("x/a", "*", False).set("x/a", "y", True)),
    ])


def updates():
    mutate = netpol("x/allow-all-mutate-to-deny-all", {}, ingress=[{}])
    mutated = netpol("x/allow-all-mutate-to-deny-all", {}, ingress=[])
    from_b2 = netpol("x/a-from-updated-pod", labels(pod="a"), ingress=[{
        "from": [{"podSelector": labels(pod="b", pod2="updated")}]}])
    xb_updated = pod("x/b", labels={"pod": "b", "pod2": "updated"})
    xb_plain = pod("x/b")
    target = netpol("x/deny-ingress-to-target", labels(target="true"), types=["Ingress"])
    xc_target = pod("x/c", labels={"pod": "c", "target": "true"})
    from_ns2 = netpol("x/a-from-updated-ns", labels(pod="a"), ingress=[{
        "from": [{"namespaceSelector": labels(ns2="updated")}]}])
    ns_y_updated = namespace("y", {"ns2": "updated"})
    ns_y_plain = namespace("y")
    from_zc = netpol("y/a-from-z-c", labels(pod="a"), ingress=[{
        "from": [{"namespaceSelector": labels(ns="z"), "podSelector": labels(pod="c")}]}])
    zc = pod("z/c")
    zc_new_ip = pod("z/c", ip="10.244.1.33")
    without_zc = [p for p in ALL if p != "z/c"]

    def only_zc_to_ya(pods=None):
        r = R(pods).set("*", "y/a", False)
        return r.set("z/c", "y/a", True)

    scenario("updates.yaml", """
Changes between probes: a policy created, changed and deleted; a pod relabelled
into and out of a selector (as peer and as target); a namespace relabelled; a pod
deleted and re-added (with a new IP). Upstream: "should enforce updated policy",
"should allow ingress access from updated pod", "should deny ingress access to
updated pod", "should allow ingress access from updated namespace", "should stop
enforcing policies after they are deleted".
""", [
        apply(mutate),
        probe("TCP", 81, R()),
        apply(mutated),  # same policy, ingress now []
        probe("TCP", 81, R().set("*", "x", False)),
        delete(mutated),
        probe("TCP", 81, R()),
        # Peer pod relabelled into, then out of, the selector.
        apply(from_b2),
        probe("TCP", 80, R().set("*", "x/a", False)),
        apply(xb_updated),
        probe("TCP", 80, R().set("*", "x/a", False).set("x/b", "x/a", True)),
        apply(xb_plain),
        probe("TCP", 80, R().set("*", "x/a", False)),
        delete(from_b2),
        # Target pod relabelled into a policy's podSelector.
        apply(target),
        probe("TCP", 80, R()),
        apply(xc_target),
        probe("TCP", 80, R().set("*", "x/c", False)),
        delete(target),
        probe("TCP", 80, R()),
        # Namespace relabelled into, then out of, a namespaceSelector.
        apply(from_ns2),
        probe("TCP", 80, R().set("*", "x/a", False)),
        apply(ns_y_updated),
        probe("TCP", 80, R().set("*", "x/a", False).set("y", "x/a", True)),
        apply(ns_y_plain),
        probe("TCP", 80, R().set("*", "x/a", False)),
        delete(from_ns2),
        # A peer pod deleted, then re-added with a new IP.
        apply(from_zc),
        probe("TCP", 80, only_zc_to_ya()),
        delete(zc),
        probe("TCP", 80, only_zc_to_ya(without_zc)),
        apply(zc_new_ip),
        probe("TCP", 80, only_zc_to_ya()),
        probe("UDP", 80, only_zc_to_ya()),
    ])


def ipv6():
    both = netpol("y/a-from-x-c-both-families", labels(pod="a"), ingress=[{"from": [
        {"ipBlock": {"cidr": "10.244.1.12/32"}},
        {"ipBlock": {"cidr": "fd00:10:244:1::12/128"}}]}])
    except_both = netpol("y/a-from-node-2-both-families", labels(pod="a"), ingress=[{"from": [
        {"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]}},
        {"ipBlock": {"cidr": "fd00:10:244::/48", "except": ["fd00:10:244:1::/64"]}}]}])
    v6_only = netpol("y/a-from-v6-only", labels(pod="a"), ingress=[{"from": [
        {"ipBlock": {"cidr": "fd00:10:244:1::/64"}}]}])
    node1_to_ya = R().set("*", "y/a", False)
    for key, (node_name, _, _) in PLACEMENT.items():
        if node_name == "node-1":
            node1_to_ya.set(key, "y/a", True)
    scenario("ipv6.yaml", """
Dual-stack: every pod has an IPv4 and an IPv6 address (IPv4 first), and each
case is probed over both families (`family: IPv6` for the second). ipBlocks in
both families; v6 excepts. The last case is family-dependent: an IPv6-only
ipBlock (node-1's IPv6 pod CIDR) lets node-1's pods reach y/a over IPv6 only.
""", [
        apply(both),
        probe("TCP", 80, R().set("*", "y/a", False).set("x/c", "y/a", True)),
        probe("UDP", 81, R().set("*", "y/a", False).set("x/c", "y/a", True)),
        probe("TCP", 80, R().set("*", "y/a", False).set("x/c", "y/a", True), family="IPv6"),
        probe("UDP", 81, R().set("*", "y/a", False).set("x/c", "y/a", True), family="IPv6"),
        delete(both),
        apply(except_both),
        probe("TCP", 80, R().set("*", "y/a", False).set("x/b", "y/a", True)
              .set("y/c", "y/a", True).set("z/b", "y/a", True)),
        probe("TCP", 80, R().set("*", "y/a", False).set("x/b", "y/a", True)
              .set("y/c", "y/a", True).set("z/b", "y/a", True), family="IPv6"),
        delete(except_both),
        apply(v6_only),
        probe("TCP", 80, R().set("*", "y/a", False)),
        probe("TCP", 80, node1_to_ya, family="IPv6"),
    ])


if __name__ == "__main__":
    base()
    default_deny()
    allow_all()
    selectors()
    ipblock()
    ports()
    sctp()
    policy_types()
    updates()
    ipv6()
