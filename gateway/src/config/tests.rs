use std::time::Duration;

use super::*;

const KEY_A: &str = "00112233445566778899aabbccddeeff01020304";
const KEY_B: &str = "ffeeddccbbaa99887766554433221100a1a2a3a4";

fn env(name: &str) -> Option<String> {
    match name {
        "KEY_A" => Some(KEY_A.into()),
        "KEY_B" => Some(KEY_B.into()),
        "KEY_C" => Some("0102030405060708090a0b0c0d0e0f1011121314".into()),
        "KEY_D" => Some("1112131415161718191a1b1c1d1e1f2021222324".into()),
        "SHORT" => Some("0011".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(Path::new("gw.toml"), text, &env).map_err(|e| e.to_string())
}

const GOOD: &str = r#"
[gateway]
id = "gw-a"
listen = "198.18.0.1:4500"

[tun]
name = "mg0"
mtu = 1400

[[peers]]
id = "gw-b"
endpoint = "198.18.0.2"
prefixes = ["10.2.0.0/16", "fd00:2::/48"]
outbound = { spi = 0x1001, key_env = "KEY_A" }
inbound = { spi = 0x2001, key_env = "KEY_B" }
"#;

#[test]
fn parses_a_good_config() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.id, "gw-a");
    assert_eq!(c.admin, "127.0.0.1:9100".parse().unwrap());
    assert_eq!(c.peers[0].endpoint, "198.18.0.2:4500".parse().unwrap());
    assert_eq!(c.peers[0].outbound.spi, 0x1001);
    assert_eq!(c.peers[0].prefixes.len(), 2);
    assert!(c.peers[0].inbound.esn);
    assert_eq!(c.peers[0].inbound.replay_window, 4096);
}

#[test]
fn errors_name_file_line_and_field() {
    let bad = GOOD.replace("spi = 0x2001", "spi = 7");
    let e = parse(&bad).unwrap_err();
    assert!(e.starts_with("gw.toml:15:"), "{e}");
    assert!(e.contains("peers[0].inbound.spi"), "{e}");

    let bad = GOOD.replace("\"10.2.0.0/16\"", "\"10.2.0.0/33\"");
    let e = parse(&bad).unwrap_err();
    assert!(e.starts_with("gw.toml:13:"), "{e}");
    assert!(e.contains("peers[0].prefixes[0]"), "{e}");

    let bad = GOOD.replace("mtu = 1400", "mtu = \"big\"");
    let e = parse(&bad).unwrap_err();
    assert!(e.starts_with("gw.toml:8:"), "{e}");
    assert!(e.contains(": tun.mtu: "), "{e}");

    let bad = GOOD.replace("mtu = 1400", "mtu = 1400\ncolour = 3");
    let e = parse(&bad).unwrap_err();
    assert!(e.contains("gw.toml:9:") && e.contains("colour"), "{e}");

    let bad = GOOD.replace("KEY_B", "SHORT");
    let e = parse(&bad).unwrap_err();
    assert!(
        e.contains("peers[0].inbound.key_env") && e.contains("gw.toml:15:"),
        "{e}"
    );
    assert!(
        !e.contains("0011"),
        "key material leaked into an error: {e}"
    );

    let bad = GOOD.replace("KEY_B", "NOPE");
    let e = parse(&bad).unwrap_err();
    assert!(e.contains("NOPE is not set"), "{e}");

    let e = parse("[gateway\nid=1").unwrap_err();
    assert!(e.starts_with("gw.toml:1:"), "{e}");
}

#[test]
fn refuses_ambiguous_peers() {
    let two = format!(
        "{GOOD}\n[[peers]]\nid = \"gw-c\"\nendpoint = \"198.18.0.3:4500\"\nprefixes = [\"10.2.128.0/17\"]\noutbound = {{ spi = 0x1002, key_env = \"KEY_C\" }}\ninbound = {{ spi = 0x2002, key_env = \"KEY_D\" }}\n"
    );
    let e = parse(&two).unwrap_err();
    assert!(e.contains("overlaps"), "{e}");
    let dup = two
        .replace("10.2.128.0/17", "10.3.0.0/16")
        .replace("0x2002", "0x2001");
    let e = parse(&dup).unwrap_err();
    assert!(
        e.contains("peers[1].inbound.spi") && e.contains("unique"),
        "{e}"
    );
    let ok = two.replace("10.2.128.0/17", "10.3.0.0/16");
    assert_eq!(parse(&ok).unwrap().peers.len(), 2);
}

#[test]
fn admin_must_be_loopback() {
    let bad = GOOD.replace(
        "listen = \"198.18.0.1:4500\"",
        "listen = \"198.18.0.1:4500\"\nadmin = \"0.0.0.0:9100\"",
    );
    let e = parse(&bad).unwrap_err();
    assert!(e.contains("gateway.admin") && e.contains("loopback"), "{e}");
}

/// The admin listener only reads now: a private address, where a
/// Prometheus server in the VPC scrapes it, is fine; a public one is not.
#[test]
fn admin_may_bind_a_private_address_and_the_control_socket_has_a_default() {
    let with = |admin: &str| {
        GOOD.replace(
            "listen = \"198.18.0.1:4500\"",
            &format!("listen = \"198.18.0.1:4500\"\nadmin = \"{admin}\""),
        )
    };
    assert_eq!(
        parse(&with("10.0.0.5:9100")).unwrap().admin,
        "10.0.0.5:9100".parse().unwrap()
    );
    assert!(parse(&with("[fd00::5]:9100")).is_ok());
    let e = parse(&with("198.51.100.1:9100")).unwrap_err();
    assert!(e.contains("gateway.admin") && e.contains("private"), "{e}");
    let c = parse(GOOD).unwrap().control;
    assert_eq!(c.path, Path::new(DEFAULT_CONTROL));
    assert_eq!(c.group, None);
    let grouped = GOOD.replace(
        "listen = \"198.18.0.1:4500\"",
        "listen = \"198.18.0.1:4500\"\ncontrol_group = \"no-such-group-here\"",
    );
    let e = parse(&grouped).unwrap_err();
    assert!(
        e.contains("gateway.control_group") && e.contains("no group 'no-such-group-here'"),
        "{e}"
    );
}

#[test]
fn the_shipped_examples_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-gateways");
    let a = Config::load(&dir.join("a.toml")).unwrap();
    let b = Config::load(&dir.join("b.toml")).unwrap();
    assert_eq!(a.peers[0].outbound.spi, b.peers[0].inbound.spi);
    assert_eq!(a.peers[0].inbound.spi, b.peers[0].outbound.spi);
    assert_eq!(
        a.peers[0].outbound.lifetime.hard.time,
        Some(Duration::from_secs(3600))
    );
}

#[test]
fn refuses_configs_that_would_break_the_tunnel() {
    let e = parse(&GOOD.replace("KEY_B", "KEY_A")).unwrap_err();
    assert!(
        e.contains("peers[0].inbound") && e.contains("same key as peers[0].outbound"),
        "{e}"
    );
    let e = parse(&GOOD.replace("\"10.2.0.0/16\"", "\"198.18.0.0/16\"")).unwrap_err();
    assert!(
        e.contains("peers[0].prefixes") && e.contains("routed into the tunnel itself"),
        "{e}"
    );
    let e = parse(&GOOD.replace(
        "endpoint = \"198.18.0.2\"",
        "endpoint = \"[2001:db8::2]:4500\"",
    ))
    .unwrap_err();
    assert!(
        e.contains("peers[0].endpoint") && e.contains("address family"),
        "{e}"
    );
    let e = parse(&GOOD.replace("mtu = 1400", "mtu = 1000")).unwrap_err();
    assert!(e.contains("gw.toml:8:") && e.contains("tun.mtu"), "{e}");
    let lt = GOOD.replace(
        "mtu = 1400\n",
        "mtu = 1400\n\n[sa]\nlifetime.soft = { packets = 0 }\n",
    );
    let e = parse(&lt).unwrap_err();
    assert!(
        e.contains("gw.toml:11:")
            && e.contains("sa.lifetime.soft.packets")
            && e.contains("limit of 0"),
        "{e}"
    );
    let lt = GOOD.replace(
        "mtu = 1400\n",
        "mtu = 1400\n\n[sa]\nlifetime.soft = { seconds = 60 }\nlifetime.hard = { seconds = 60 }\n",
    );
    let e = parse(&lt).unwrap_err();
    assert!(
        e.contains("gw.toml:11:")
            && e.contains("sa.lifetime.soft.seconds")
            && e.contains("below the hard limit"),
        "{e}"
    );
}

const MESH: &str = r#"
[gateway]
id = "gw-a"
listen = "198.18.0.1:4500"
prefixes = ["10.1.0.0/16"]

[tun]
name = "mg0"

[signal]
listen = "198.18.0.1"
ca = "ca.pem"
cert = "gw-a.pem"
key = "gw-a.key"
seeds = ["gw-a@198.18.0.1:4433", "gw-b@198.18.0.2"]

[keys]
master_key = "/etc/meshgate/master.key"
"#;

#[test]
fn a_mesh_member_config_and_its_mistakes() {
    let c = parse(MESH).unwrap();
    let sig = c.signal.as_ref().unwrap();
    assert_eq!(sig.listen, "198.18.0.1:4433".parse().unwrap());
    assert_eq!(
        sig.seeds,
        [("gw-b".to_string(), "198.18.0.2:4433".parse().unwrap())],
        "its own entry in a shared seed list is skipped"
    );
    assert_eq!(sig.ca, Path::new("ca.pem"));
    assert_eq!(sig.keys.epoch, 1);
    assert_eq!(c.advertise, c.listen);
    assert_eq!(
        (sig.max_members, sig.forget_down_after.as_secs()),
        (4096, 3600),
        "the defaults"
    );
    let c = parse(&MESH.replace(
        "seeds = [",
        "max_members = 300\nforget_down_after = 600\nseeds = [",
    ))
    .unwrap();
    let sig = c.signal.as_ref().unwrap();
    assert_eq!(
        (sig.max_members, sig.forget_down_after.as_secs()),
        (300, 600)
    );

    let cases = [
        (MESH.replace("\n[keys]\nmaster_key = \"/etc/meshgate/master.key\"\n", ""), "needs a [keys] section"),
        (format!("{MESH}\n[[peers]]\nid = \"gw-c\"\nendpoint = \"198.18.0.3\"\nprefixes = [\"10.3.0.0/16\"]\noutbound = {{ spi = 0x1001, key_env = \"KEY_A\" }}\ninbound = {{ spi = 0x2001, key_env = \"KEY_B\" }}\n"), "cannot be combined"),
        (MESH.replace("\"gw-b@198.18.0.2\"", "\"198.18.0.2:4433\""), "is not member-id@address:port"),
        (MESH.replace("listen = \"198.18.0.1:4500\"", "listen = \"0.0.0.0:4500\""), "gateway.advertise"),
        (MESH.replace("master_key =", "epoch = 0\nmaster_key ="), "epochs start at 1"),
        (MESH.replace("[\"10.1.0.0/16\"]", "[\"198.18.0.0/24\"]"), "contains gateway.listen"),
        (MESH.replace("seeds = [", "max_members = 1\nseeds = ["), "signal.max_members: 1 is outside 2..=65536"),
        (MESH.replace("seeds = [", "forget_down_after = 5\nseeds = ["), "signal.forget_down_after: 5 s is outside 60..=604800 s"),
    ];
    for (text, expected) in cases {
        let e = parse(&text).unwrap_err();
        assert!(e.contains(expected), "{expected}: {e}");
    }
    let many: Vec<String> = (0..60).map(|i| format!("\"fd00:{i:x}::/48\"")).collect();
    // The config takes it; the member refuses its record (the gateway
    // does not start).
    let config =
        parse(&MESH.replace("[\"10.1.0.0/16\"]", &format!("[{}]", many.join(", ")))).unwrap();
    let e = crate::membership::info::check_fits(&crate::mesh::local_info(&config)).unwrap_err();
    assert!(
        e.contains("gateway.prefixes") && e.contains("aggregated"),
        "{e}"
    );
}

#[test]
fn kms_epoch_keys_and_their_mistakes() {
    let local = "[keys]\nmaster_key = \"/etc/meshgate/master.key\"\n";
    let kms = "[keys]\nprovider = \"kms\"\nkms_key = \"alias/meshgate\"\nmesh = \"prod\"\nwrapped_key = \"epoch-1.kms\"\nregion = \"eu-west-1\"\nrecheck_secs = 30\n";
    let c = parse(&MESH.replace(local, kms)).unwrap();
    let KeySource::Kms(k) = &c.signal.as_ref().unwrap().keys.source else {
        panic!("kms keys");
    };
    assert_eq!(
        (k.key.as_str(), k.mesh.as_str(), k.region.as_str()),
        ("alias/meshgate", "prod", "eu-west-1")
    );
    assert_eq!(k.recheck.as_secs(), 30);
    assert!(k.wrapped_key.ends_with("epoch-1.kms") && k.endpoint_url.is_none());
    let cases = [
        (
            kms.replace("kms_key = \"alias/meshgate\"\n", ""),
            "keys.kms_key: the kms provider needs kms_key",
        ),
        (
            kms.replace("mesh = \"prod\"", "mesh = \" \""),
            "keys.mesh: mesh, the mesh's name",
        ),
        (kms.replace("region = \"eu-west-1\"\n", ""), "keys.region"),
        (
            kms.replace("recheck_secs = 30", "recheck_secs = 2"),
            "keys.recheck_secs: 2 is outside 5 to 3600 seconds",
        ),
        (
            format!("{kms}endpoint_url = \"moto:5000\"\n"),
            "keys.endpoint_url: 'moto:5000' is not an http",
        ),
        (
            format!("{kms}master_key = \"m.key\"\n"),
            "keys.master_key: the kms provider takes no master key",
        ),
        (
            format!("{local}kms_key = \"alias/x\"\n"),
            "keys.kms_key: only the kms provider takes this",
        ),
        (
            kms.replace("\"kms\"", "\"vault\""),
            "unknown key provider 'vault'; expected local or kms",
        ),
    ];
    for (keys, expected) in cases {
        let e = parse(&MESH.replace(local, &keys)).unwrap_err();
        assert!(e.contains(expected), "{expected}: {e}");
    }
}

#[test]
fn a_cloud_section_claims_for_a_group_and_its_mistakes() {
    let lab = MESH.replace(
        "prefixes = [\"10.1.0.0/16\"]",
        "prefixes = [\"10.1.0.0/16\"]\ngroup = \"pair\"",
    ) + "\n[cloud]\nbackend = \"lab\"\ninterface = \"10.1.0.5\"\nroute_tables = [\"rtb-1\"]\nrouters = { \"rtb-1\" = \"lab-r1\" }\n";
    let c = parse(&lab).unwrap();
    let cloud = c.cloud.unwrap();
    assert_eq!(cloud.interface, "10.1.0.5");
    assert_eq!(cloud.route_tables, ["rtb-1"]);
    assert_eq!(
        cloud.backend,
        CloudBackendKind::Lab {
            routers: [("rtb-1".to_string(), "lab-r1".to_string())].into(),
            addresses: Vec::new(),
        }
    );
    let both = parse(&lab.replace(
        "interface = \"10.1.0.5\"",
        "interface = \"eni-1a\"\naddresses = [\"10.1.0.5\", \"fd00:1::5\"]",
    ))
    .unwrap();
    assert!(matches!(
        both.cloud.unwrap().backend,
        CloudBackendKind::Lab { addresses, .. } if addresses.len() == 2
    ));
    // On AWS: tables found by their tags, through a given endpoint.
    let aws = parse(
        &lab.replace("backend = \"lab\"", "backend = \"aws\"\nregion = \"eu-west-1\"\nendpoint_url = \"http://127.0.0.1:5000\"\nmesh = \"prod\"")
            .replace("interface = \"10.1.0.5\"", "interface = \"eni-0abc\"")
            .replace("route_tables = [\"rtb-1\"]\n", ""),
    )
    .unwrap()
    .cloud
    .unwrap();
    assert_eq!(aws.mesh.as_deref(), Some("prod"));
    assert!(aws.route_tables.is_empty());
    assert!(aws.dns.is_none());
    // The group's name in a private hosted zone, at gateway.advertise.
    let aws_text = lab
        .replace(
            "backend = \"lab\"",
            "backend = \"aws\"\nregion = \"eu-west-1\"",
        )
        .replace("interface = \"10.1.0.5\"", "interface = \"eni-0abc\"");
    let dns = parse(&format!(
        "{aws_text}dns_zone = \"Z0123ABC\"\ndns_name = \"pair.mesh.internal.\"\n"
    ))
    .unwrap()
    .cloud
    .unwrap()
    .dns
    .unwrap();
    assert_eq!(
        (dns.zone.as_str(), dns.name.as_str(), dns.ttl),
        ("Z0123ABC", "pair.mesh.internal", 10)
    );
    assert_eq!(
        dns.address,
        "198.18.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    for (extra, expected) in [
        (
            "dns_zone = \"Z0123ABC\"\n",
            "cloud.dns_name: a record needs its name",
        ),
        (
            "dns_name = \"pair.mesh.internal\"\n",
            "cloud.dns_zone: a record needs its private hosted zone",
        ),
        (
            "dns_zone = \"Z 1\"\ndns_name = \"x.internal\"\n",
            "cloud.dns_zone: 'Z 1' is not a hosted zone id",
        ),
        (
            "dns_zone = \"Z1\"\ndns_name = \"bad_name.internal\"\n",
            "cloud.dns_name: 'bad_name.internal' is not a DNS name",
        ),
        (
            "dns_zone = \"Z1\"\ndns_name = \"x.internal\"\ndns_ttl = 0\n",
            "cloud.dns_ttl: 0 is outside 1 to 86400 seconds",
        ),
    ] {
        let e = parse(&format!("{aws_text}{extra}")).unwrap_err();
        assert!(e.contains(expected), "{expected}: {e}");
    }
    let e = parse(&format!(
        "{lab}dns_zone = \"Z1\"\ndns_name = \"x.internal\"\n"
    ))
    .unwrap_err();
    assert!(e.contains("needs the aws backend"), "{e}");
    assert_eq!(
        aws.backend,
        CloudBackendKind::Aws {
            region: "eu-west-1".into(),
            endpoint_url: Some("http://127.0.0.1:5000".into())
        }
    );
    for (text, expected) in [
        (lab.replace("group = \"pair\"\n", ""), "set gateway.group"),
        (
            lab.replace("backend = \"lab\"", "backend = \"gcp\""),
            "cloud.backend: unknown cloud backend 'gcp'; the backends are aws and lab",
        ),
        (
            lab.replace("backend = \"lab\"", "backend = \"aws\""),
            "cloud.region",
        ),
        (
            lab.replace(
                "backend = \"lab\"",
                "backend = \"aws\"\nregion = \"eu-west-1\"",
            ),
            "cloud.interface: '10.1.0.5' is not a network interface id",
        ),
        (
            lab.replace(
                "backend = \"lab\"",
                "backend = \"aws\"\nregion = \"eu-west-1\"\nendpoint_url = \"moto:5000\"",
            ),
            "cloud.endpoint_url: 'moto:5000' is not",
        ),
        (
            lab.replace(
                "route_tables = [\"rtb-1\"]",
                "route_tables = []\nmesh = \"prod\"",
            ),
            "cloud.route_tables",
        ),
        (
            lab.replace("route_tables = [\"rtb-1\"]", "route_tables = []"),
            "cloud.route_tables",
        ),
        (
            lab.replace("routers = { \"rtb-1\" = \"lab-r1\" }", "routers = {}"),
            "router namespace of route table rtb-1",
        ),
        (
            lab.replace("interface = \"10.1.0.5\"", "interface = \"\""),
            "cloud.interface",
        ),
        (
            lab.replace("[\"rtb-1\"]", "[\"rtb-1\", \"rtb-1\"]"),
            "listed twice",
        ),
        (
            lab.replace(
                "interface = \"10.1.0.5\"",
                "interface = \"eni-1a\"\naddresses = [\"10.1.0.5\", \"10.1.0.6\"]",
            ),
            "cloud.addresses[1]: one address per family",
        ),
        (
            lab.replace(
                "interface = \"10.1.0.5\"",
                "interface = \"eni-1a\"\naddresses = [\"ten\"]",
            ),
            "cloud.addresses[0]: 'ten' is not an IP address",
        ),
    ] {
        let e = parse(&text).unwrap_err();
        assert!(e.contains(expected), "{expected}: {e}");
    }
}

#[test]
fn further_underlays_are_advertised_beside_internet_and_their_mistakes() {
    let text = MESH.replace(
        "listen = \"198.18.0.1:4500\"",
        "listen = \"0.0.0.0:4500\"\nadvertise = \"198.18.0.1:4500\"\nendpoints = { dx = \"10.200.0.1\" }",
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.endpoints,
        [("dx".to_string(), "10.200.0.1:4500".parse().unwrap())]
    );
    let info = crate::mesh::local_info(&c);
    assert_eq!(
        info.endpoints,
        [
            ("internet".to_string(), "198.18.0.1:4500".parse().unwrap()),
            ("dx".to_string(), "10.200.0.1:4500".parse().unwrap())
        ]
    );
    for (from, to, expected) in [
        (
            "dx =",
            "internet =",
            "the internet endpoint is gateway.advertise",
        ),
        ("dx =", "DX =", "a label is 1-32 of [a-z0-9_-]"),
        (
            "\"10.200.0.1\"",
            "\"0.0.0.0\"",
            "is not an address peers can send to",
        ),
        (
            "listen = \"0.0.0.0:4500\"",
            "listen = \"198.18.0.1:4500\"",
            "listens on 198.18.0.1 only",
        ),
    ] {
        let e = parse(&text.replace(from, to)).unwrap_err();
        assert!(e.contains(expected), "{expected}: {e}");
        assert!(e.contains("gateway.endpoints."), "names the field: {e}");
    }
}

/// `[signal.discovery]`: seeds by EC2 tags in the regions and accounts of
/// the mesh; each mistake named with its line and field.
#[cfg(feature = "aws")]
#[test]
fn discovery_by_tags_and_its_mistakes() {
    const D: &str = "\n[signal.discovery]\nmesh = \"prod\"\nregions = [\"eu-west-1\", \"us-east-1\", \"eu-west-1\"]\nroles = [\"arn:aws:iam::210987654321:role/meshgate-discovery\"]\n";
    let with = |section: &str| MESH.replace("\n[keys]", &format!("{section}\n[keys]"));
    let c = parse(&with(D)).unwrap();
    let d = c.signal.unwrap().discovery.unwrap();
    assert_eq!(d.mesh, "prod");
    assert_eq!(d.regions, ["eu-west-1", "us-east-1"], "each region once");
    assert_eq!(
        d.roles,
        ["arn:aws:iam::210987654321:role/meshgate-discovery"]
    );
    assert_eq!(d.endpoint_url, None);
    let cases = [
        (
            D.replace("mesh = \"prod\"", "mesh = \"\""),
            "signal.discovery.mesh",
        ),
        (
            D.replace("\"us-east-1\"", "\"US East\""),
            "signal.discovery.regions[1]: 'US East' is not a region name",
        ),
        (
            D.replace(
                "regions = [\"eu-west-1\", \"us-east-1\", \"eu-west-1\"]",
                "regions = []",
            ),
            "signal.discovery.regions: name the regions",
        ),
        (
            D.replace("210987654321", "2109"),
            "signal.discovery.roles[0]",
        ),
        (
            D.replace("role/meshgate-discovery", "user/someone"),
            "is not a role ARN",
        ),
        (
            format!("{D}endpoint_url = \"moto:5000\"\n"),
            "signal.discovery.endpoint_url: 'moto:5000' is not an http:// or https:// URL",
        ),
        (
            format!("{D}backend = \"consul\"\n"),
            "unknown discovery backend 'consul'",
        ),
        (format!("{D}tags = 1\n"), "unknown field"),
    ];
    for (section, expected) in cases {
        let e = parse(&with(&section)).unwrap_err();
        assert!(e.contains(expected), "{expected}: {e}");
        let line = e.split(':').nth(1).and_then(|l| l.parse::<usize>().ok());
        assert!(line.is_some_and(|l| l > 15), "the line of the mistake: {e}");
    }
}
