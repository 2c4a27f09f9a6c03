use std::path::Path;

use super::*;

const EXAMPLE: &str = include_str!("../../../deploy/fleet.toml.example");

fn example() -> Fleet {
    Fleet::parse(Path::new("fleet.toml"), EXAMPLE).unwrap()
}

fn facts(fleet: &Fleet) -> Facts {
    let mut f = Facts::default();
    for (i, r) in fleet.regions.iter().enumerate() {
        for (j, z) in r.zones.iter().enumerate() {
            f.subnet_cidrs
                .insert(z.subnet.clone(), format!("10.{}.{j}.0/24", i + 1));
        }
        let account = r
            .account_role
            .as_ref()
            .map_or("111111111111", |_| "222222222222");
        f.accounts
            .insert(r.account_role.clone(), account.to_string());
    }
    f
}

fn parse_err(text: &str) -> String {
    Fleet::parse(Path::new("fleet.toml"), text)
        .unwrap_err()
        .to_string()
}

#[test]
fn the_example_fleet_parses_with_every_market() {
    let f = example();
    assert_eq!(f.mesh, "corp");
    assert_eq!(f.ca, Path::new("ca"));
    assert_eq!(f.regions.len(), 3);
    let eu = &f.regions[0];
    assert!(
        matches!(&eu.zones[0].market, Market::Spot { instance_types } if instance_types.len() == 3)
    );
    assert_eq!(
        eu.zones[1].market,
        Market::OnDemand {
            instance_type: "c6in.large".into()
        }
    );
    assert_eq!(eu.secrets_key, f.kms_key);
    assert_eq!(
        f.regions[2].account_role.as_deref(),
        Some("arn:aws:iam::222222222222:role/meshgate-admin")
    );
}

#[test]
fn fleet_file_mistakes_name_line_and_field() {
    let cases = [
        (EXAMPLE.replace("mesh = \"corp\"", "mesh = \"Corp!\""), "fleet.toml:9:", "mesh"),
        (EXAMPLE.replace("market = \"spot\"  ", "market = \"cheap\""), "fleet.toml:15:", "market"),
        (
            EXAMPLE.replace("spot_types = [\"c6in.large\", \"c7i.large\", \"m6in.large\"]", "spot_types = [\"c6in.large\"]"),
            "fleet.toml:15:",
            "spot needs spot_types",
        ),
        (EXAMPLE.replace("vpc = \"vpc-0b1b", "vpc = \"vpx-0b1b"), "fleet.toml:35:", "regions[1].vpc"),
        (EXAMPLE.replace("\"10.2.0.0/16\"", "\"10.2.0.1/16\""), "fleet.toml:36:", "regions[1].prefixes[0]"),
        (
            EXAMPLE.replace("{ zone = \"us-east-1b\"", "{ zone = \"us-east-1a\""),
            "fleet.toml:41:12:",
            "fleet.toml:41:12: regions[1].zones[1].zone: zone us-east-1a is listed twice",
        ),
        (
            EXAMPLE.replace("{ zone = \"us-east-1b\"", "{ zone = \"eu-west-1c\""),
            "fleet.toml:41:",
            "not a zone of us-east-1",
        ),
        (
            EXAMPLE.replace("arn:aws:kms:us-east-1:111111111111:key/2c", "arn:aws:kms:eu-west-1:111111111111:key/2c"),
            "fleet.toml:38:",
            "Secrets Manager in us-east-1 encrypts only with a key of us-east-1",
        ),
        (
            EXAMPLE.replace("secrets_key = \"arn:aws:kms:us-east-1:111111111111:key/2c7a6d1e-5c1f-4d8e-9a44-1f2e3d4c5b6a\"\n", ""),
            "fleet.toml:33:",
            "name a KMS key of us-east-1",
        ),
        (EXAMPLE.replace("package_sha256 = \"0000", "package_sha256 = \"zz00"), "fleet.toml:13:", "package_sha256"),
        (EXAMPLE.replace("policy = \"full-mesh\"", "policy = \"nope\""), "fleet.toml:18:", "no built-in policy 'nope'"),
        (EXAMPLE.replace("signal_port = 4433", "signal_port = 4500"), "fleet.toml:17:", "signal_port"),
        (EXAMPLE.replace("role/meshgate-admin", "user/meshgate-admin"), "fleet.toml:46:", "regions[2].account_role"),
        (EXAMPLE.replace("image = \"ami-0c", "imag = \"ami-0c"), "fleet.toml:", "imag"),
        // An alias matches no IAM policy's Resource: the appliances would be refused.
        (
            EXAMPLE.replace("key/0b7a6d1e-5c1f-4d8e-9a44-1f2e3d4c5b6a", "alias/meshgate"),
            "fleet.toml:11:",
            "not an alias",
        ),
        // What reaches the user data's shell and the appliance's TOML.
        (
            EXAMPLE.replace("policy = \"full-mesh\"", "policy = \"full-mesh\"\nendpoint_url = \"http://x';reboot;'\""),
            "fleet.toml:19:",
            "endpoint_url",
        ),
        (
            EXAMPLE.replace("meshgate_0.1.0_amd64.deb", "mesh\\tgate.deb"),
            "fleet.toml:12:",
            "package_url",
        ),
    ];
    for (text, at, what) in cases {
        let e = parse_err(&text);
        assert!(
            e.starts_with(at) && e.contains(what),
            "wanted {at} ... {what}, got: {e}"
        );
    }
}

#[test]
fn every_appliance_config_the_fleet_writes_is_one_the_gateway_accepts() {
    let f = example();
    let facts = facts(&f);
    let want = desired(&f, &facts);
    let templates: Vec<&Resource> = want
        .iter()
        .filter(|r| r.kind == Kind::LaunchTemplate)
        .collect();
    assert_eq!(templates.len(), 6);
    for t in templates {
        let script = t.prop("user_data");
        let start = script.find("<<'MESHGATE_CONFIG'\n").unwrap() + "<<'MESHGATE_CONFIG'\n".len();
        let end = script.find("MESHGATE_CONFIG\nsed").unwrap();
        let config = script[start..end]
            .replace(user_data::ADDRESS, "10.1.0.10")
            .replace(user_data::INTERFACE, "eni-0123456789abcdef0");
        let parsed = crate::config::Config::parse(Path::new("meshgate.toml"), &config, &|_| None)
            .unwrap_or_else(|e| panic!("{}: {e}\n{config}", t.name));
        assert_eq!(
            parsed.placement.group.as_deref(),
            Some(parsed.placement.region.as_str())
        );
        assert!(parsed.cloud.is_some() && parsed.signal.is_some());
        assert!(
            script.contains(&f.package_sha256),
            "the script checks the package"
        );
        for secret_word in ["PRIVATE KEY", "BEGIN CERTIFICATE"] {
            assert!(
                !script.contains(secret_word),
                "no key material in user data"
            );
        }
    }
}

#[test]
fn the_plan_creates_what_is_missing_changes_what_differs_and_removes_the_rest() {
    let f = example();
    let facts = facts(&f);
    let want = desired(&f, &facts);
    // 2 accounts: a discovery role each; 6 appliances: role, profile,
    // secret, template, group; 3 security groups; 3 tagged route tables.
    assert_eq!(want.len(), 2 + 6 * 5 + 3 + 3);

    let first = plan(&want, &[]);
    assert_eq!(first.len(), want.len());
    assert!(first.iter().all(|a| a.change == Change::Create));
    let kinds: Vec<Kind> = first.iter().map(|a| a.resource.kind).collect();
    assert!(
        kinds.windows(2).all(|w| w[0] <= w[1]),
        "created in dependency order: {kinds:?}"
    );

    assert!(plan(&want, &want).is_empty(), "a second up plans nothing");

    let mut actual = want.clone();
    let changed = actual
        .iter_mut()
        .find(|r| r.kind == Kind::SecurityGroup)
        .unwrap();
    changed
        .props
        .insert("ingress".into(), "udp 4500 0.0.0.0/0".into());
    let stray = Resource::new(
        Kind::AutoScalingGroup,
        &want[0].scope,
        "meshgate-corp-eu-west-1c",
    );
    actual.push(stray.clone());
    let actions = plan(&want, &actual);
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(
        matches!(&actions[0].change, Change::Update(c) if c == &[("ingress".to_string(), "udp 4500 0.0.0.0/0".to_string())])
    );
    assert_eq!(
        actions[1],
        Action {
            change: Change::Delete,
            resource: stray
        }
    );
    let text = plan::render(&actions);
    assert!(
        text.contains("~ change security group meshgate-corp"),
        "{text}"
    );
    assert!(
        text.contains("1 to create, 1 to change, 1 to remove")
            || text.contains("0 to create, 1 to change, 1 to remove"),
        "{text}"
    );

    let down = teardown(&want);
    let kinds: Vec<Kind> = down.iter().map(|a| a.resource.kind).collect();
    assert!(down.iter().all(|a| a.change == Change::Delete));
    assert!(
        kinds.windows(2).all(|w| w[0] >= w[1]),
        "removed in reverse order: {kinds:?}"
    );
}

#[test]
fn least_privilege_each_role_reads_its_own_secret_only() {
    let f = example();
    let facts = facts(&f);
    let want = desired(&f, &facts);
    let role = want
        .iter()
        .find(|r| r.kind == Kind::Role && r.name == "meshgate-corp-us-east-1b")
        .unwrap();
    let policy = role.prop("policy");
    assert!(
        policy.contains("secret:meshgate/corp/us-east-1b-??????"),
        "{policy}"
    );
    assert!(!policy.contains("us-east-1a"), "{policy}");
    assert!(
        policy.contains("kms:EncryptionContext:meshgate:mesh"),
        "{policy}"
    );
    assert!(
        policy.contains("arn:aws:iam::222222222222:role/meshgate/corp/meshgate-corp-discovery"),
        "{policy}"
    );
    let sg = want.iter().find(|r| r.kind == Kind::SecurityGroup).unwrap();
    assert!(!sg.prop("ingress").contains("0.0.0.0/0"));
    assert_eq!(
        sg.prop("ingress").matches("udp 4500").count(),
        6,
        "{}",
        sg.prop("ingress")
    );
}
