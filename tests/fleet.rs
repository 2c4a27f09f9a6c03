//! `meshgate plan`, `up` and `down` through the real binary and the
//! official SDK against moto: a fleet of three regions in two accounts
//! (the third region through a role) is planned, brought up half-way (a
//! refused call stops it, naming the API and what to do), brought down
//! from there, brought up whole, brought up again with no change,
//! discovered by its tags from an appliance's own config, keyed through
//! KMS from an appliance's secret, and brought down, leaving nothing; an
//! `up` interrupted half-way is then completed by the next.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::faults::{Fault, FaultProxy};
use serde_json::Value;

const OTHER_ACCOUNT: &str = "222222222222";
const OTHER_ROLE: &str = "arn:aws:iam::222222222222:role/meshgate-admin";
/// moto's account for the "testing" credentials.
const OWN_ACCOUNT: &str = "123456789012";

fn settings(url: &str, region: &str, role: Option<&str>) -> meshgate_aws::Settings {
    meshgate_aws::Settings {
        region: region.into(),
        endpoint_url: Some(url.into()),
        call_timeout: Duration::from_secs(10),
        static_credentials: Some(("testing", "testing")),
        assume_role: role.map(str::to_string),
    }
}

/// Runs the binary with moto's credentials; returns (success, stdout, stderr).
fn meshgate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .output()
        .expect("running meshgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `meshgate VERB --fleet F --json`, which must succeed.
fn fleet_json(verb: &str, fleet: &Path) -> Value {
    let (ok, out, err) = meshgate(&[verb, "--fleet", fleet.to_str().unwrap(), "--json"]);
    assert!(ok, "meshgate {verb} failed: {err}");
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{verb} --json printed no JSON ({e}): {out}"))
}

/// Actions by change and kind: {"create security group": 3, ...}.
fn tally(doc: &Value) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for a in doc["actions"].as_array().expect("actions") {
        *t.entry(format!(
            "{} {}",
            a["change"].as_str().unwrap(),
            a["kind"].as_str().unwrap()
        ))
        .or_default() += 1;
    }
    t
}

/// The requests the proxy passed since the `before`th, by API (retries
/// and the SDK's own AssumeRole calls included).
fn requests_since(proxy: &FaultProxy, before: usize) -> BTreeMap<String, usize> {
    let mut by_api = BTreeMap::new();
    for (api, _) in proxy.seen.lock().unwrap()[before..].iter() {
        *by_api.entry(api.clone()).or_default() += 1;
    }
    by_api
}

/// One region of the test's cloud: its VPC, two subnets, a route table and
/// a KMS key for its secrets, made directly in moto.
struct Region {
    name: &'static str,
    role: Option<&'static str>,
    vpc: String,
    subnets: Vec<String>,
    table: String,
    key_arn: String,
}

async fn make_region(url: &str, name: &'static str, n: u8, role: Option<&'static str>) -> Region {
    let s = settings(url, name, role);
    let ec2 = meshgate_aws::Ec2::connect(&s).await;
    let (a, b) = (format!("10.{n}.1.0/24"), format!("10.{n}.2.0/24"));
    let (za, zb) = (format!("{name}a"), format!("{name}b"));
    let (vpc, subnets, table) = ec2
        .create_fleet_vpc(&format!("10.{n}.0.0/16"), &[(&a, &za), (&b, &zb)])
        .await
        .expect("a VPC in moto");
    let key = meshgate_aws::Kms::connect(&s)
        .await
        .create_key("fleet test")
        .await
        .expect("a KMS key");
    let account = if role.is_some() {
        OTHER_ACCOUNT
    } else {
        OWN_ACCOUNT
    };
    Region {
        name,
        role,
        vpc,
        subnets,
        table,
        key_arn: format!("arn:aws:kms:{name}:{account}:key/{key}"),
    }
}

fn fleet_file(url: &str, regions: &[Region]) -> String {
    let mut f = format!(
        "mesh = \"corp\"\n\
         ca = \"ca\"\n\
         kms_key = \"{}\"\n\
         package_url = \"https://downloads.example.com/meshgate_0.1.0_amd64.deb\"\n\
         package_sha256 = \"{}\"\n\
         instance_type = \"c6in.large\"\n\
         market = \"spot\"\n\
         spot_types = [\"c6in.large\", \"c7i.large\"]\n\
         signal_port = 4433\n\
         policy = \"full-mesh\"\n\
         endpoint_url = \"{url}\"\n",
        regions[0].key_arn,
        "ab".repeat(32)
    );
    for (i, r) in regions.iter().enumerate() {
        f += &format!(
            "\n[[regions]]\nname = \"{}\"\nimage = \"ami-0a1b2c3d4e5f6071{i}\"\nvpc = \"{}\"\nprefixes = [\"10.{}.0.0/16\"]\nroute_tables = [\"{}\"]\nsecrets_key = \"{}\"\nzones = [\n  {{ zone = \"{}a\", subnet = \"{}\" }},\n  {{ zone = \"{}b\", subnet = \"{}\", market = \"on-demand\" }},\n]\n",
            r.name, r.vpc, i + 1, r.table, r.key_arn, r.name, r.subnets[0], r.name, r.subnets[1]
        );
        if let Some(role) = r.role {
            f += &format!("account_role = \"{role}\"\n");
        }
    }
    f
}

/// The appliance config a launch template's user data writes, with the
/// instance's address filled in and its files under `dir`.
fn appliance_config(plan: &Value, zone: &str, dir: &Path) -> String {
    let template = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "launch template" && a["name"].as_str().unwrap().ends_with(zone))
        .unwrap_or_else(|| panic!("no launch template for {zone}"));
    let script = template["properties"]["user_data"].as_str().unwrap();
    let config = script
        .split("<<'MESHGATE_CONFIG'\n")
        .nth(1)
        .and_then(|rest| rest.split("MESHGATE_CONFIG\n").next())
        .expect("the user data writes a config");
    config
        .replace("@ADDRESS@", "127.0.0.1")
        .replace("@INTERFACE@", "eni-0123456789abcdef0")
        .replace("/etc/meshgate", dir.to_str().unwrap())
        .replace("/var/lib/meshgate", dir.to_str().unwrap())
        .replace("/run/meshgate", dir.to_str().unwrap())
}

#[test]
fn a_fleet_of_three_regions_and_two_accounts_comes_up_is_found_and_goes_without_a_trace() {
    let moto = common::moto();
    let direct = format!("http://{}", moto.addr);
    let proxy = FaultProxy::start(moto.addr);
    let dir = std::env::temp_dir().join(format!("meshgate-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let regions = rt.block_on(async {
        vec![
            make_region(&direct, "eu-west-1", 1, None).await,
            make_region(&direct, "us-east-1", 2, None).await,
            make_region(&direct, "ap-southeast-2", 3, Some(OTHER_ROLE)).await,
        ]
    });
    let (ok, _, err) = meshgate(&["ca", "init", "--dir", dir.join("ca").to_str().unwrap()]);
    assert!(ok, "ca init: {err}");
    let fleet = dir.join("fleet.toml");
    std::fs::write(&fleet, fleet_file(&proxy.url, &regions)).unwrap();

    // The plan: everything to create, nothing written.
    let first = fleet_json("plan", &fleet);
    let want: BTreeMap<String, usize> = [
        // A role per appliance, and a discovery role per account.
        ("create IAM role", 8),
        ("create instance profile", 6),
        ("create secret", 6),
        ("create security group", 3),
        ("create launch template", 6),
        ("create auto-scaling group", 6),
        ("create route table tags", 3),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(tally(&first), want);
    assert_eq!(first["writes"], 0);
    let all = first["actions"].as_array().unwrap().len();

    // No secret in user data or tags: the scripts name the secret only.
    for a in first["actions"].as_array().unwrap() {
        let text = a.to_string();
        assert!(
            !text.contains("PRIVATE KEY"),
            "a private key in {}",
            a["name"]
        );
    }

    // The same as CloudFormation: a template per account and region,
    // which cfn-lint passes.
    let cfn = dir.join("cfn");
    let (ok, out, err) = meshgate(&[
        "plan",
        "--fleet",
        fleet.to_str().unwrap(),
        "--output",
        "cloudformation",
        "--out",
        cfn.to_str().unwrap(),
    ]);
    assert!(ok, "plan --output cloudformation: {err}");
    let mut templates: Vec<PathBuf> = std::fs::read_dir(&cfn)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    templates.sort();
    assert_eq!(templates.len(), 3, "{out}");
    let lint = std::env::var("MESHGATE_CFN_LINT").unwrap_or_else(|_| "cfn-lint".into());
    for t in &templates {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(t).unwrap()).unwrap();
        let types: Vec<&str> = doc["Resources"]
            .as_object()
            .unwrap()
            .values()
            .map(|r| r["Type"].as_str().unwrap())
            .collect();
        assert!(
            types.contains(&"AWS::AutoScaling::AutoScalingGroup"),
            "{}: {types:?}",
            t.display()
        );
        assert!(
            !doc.to_string().contains("PRIVATE KEY"),
            "a key in {}",
            t.display()
        );
        let checked = Command::new(&lint).arg(t).output().unwrap_or_else(|e| {
            panic!("running {lint}: {e} (tests/run.sh installs cfn-lint in a venv)")
        });
        assert!(
            checked.status.success(),
            "cfn-lint on {}: {}{}",
            t.display(),
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }

    // An `up` stopped half-way by a refused call names the API and what to do.
    proxy.always("CreateAutoScalingGroup", Some(Fault::Forbidden));
    let (ok, _, err) = meshgate(&["up", "--fleet", fleet.to_str().unwrap()]);
    assert!(!ok, "up went through a refused CreateAutoScalingGroup");
    assert!(
        err.contains("CreateAutoScalingGroup (meshgate-corp-")
            && err.contains("need this action")
            && err.contains("run up again"),
        "{err}"
    );
    proxy.always("CreateAutoScalingGroup", None);
    let half = fleet_json("plan", &fleet);
    let left = half["actions"].as_array().unwrap().len();
    assert!(
        left > 0 && left < all,
        "{left} of {all} left after a partial up"
    );
    assert!(
        tally(&half).keys().all(|k| k.starts_with("create")),
        "{half}"
    );

    // `down` after a partial `up` removes what was made, and nothing else.
    let gone = fleet_json("down", &fleet);
    assert_eq!(gone["actions"].as_array().unwrap().len(), all - left);
    assert_eq!(
        tally(&fleet_json("plan", &fleet)),
        want,
        "down left something of the partial up"
    );

    // The whole `up`, through throttling and 5xx on the way (retried),
    // then a second that changes nothing.
    proxy.inject("CreateRole", Fault::Throttle);
    proxy.inject("CreateLaunchTemplate", Fault::ServerError);
    proxy.inject("CreateAutoScalingGroup", Fault::Throttle);
    let before = proxy.seen.lock().unwrap().len();
    let up = fleet_json("up", &fleet);
    let requests = requests_since(&proxy, before);
    assert_eq!(proxy.injected("CreateRole", Fault::Throttle), 1);
    assert_eq!(
        proxy.injected("CreateLaunchTemplate", Fault::ServerError),
        1
    );
    assert_eq!(tally(&up), want);
    eprintln!(
        "up of 3 regions, 2 accounts, 6 appliances on an empty moto: {} s, {} reads, {} writes; HTTP requests {requests:?}",
        up["seconds"], up["reads"], up["writes"]
    );
    let before = proxy.seen.lock().unwrap().len();
    let again = fleet_json("up", &fleet);
    let requests = requests_since(&proxy, before);
    assert!(
        requests
            .keys()
            .all(|api| ["Describe", "List", "Get", "AssumeRole"]
                .iter()
                .any(|p| api.starts_with(p))),
        "a second up sent more than reads: {requests:?}"
    );
    assert_eq!(again["actions"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["writes"], 0, "a second up wrote");
    eprintln!(
        "second up: {} s, {} reads, 0 writes; HTTP requests {requests:?}",
        again["seconds"], again["reads"]
    );
    let (ok, text, _) = meshgate(&["plan", "--fleet", fleet.to_str().unwrap()]);
    assert!(ok && text.contains("nothing to do"), "{text}");

    // An appliance finds every other by tags, the other account's through
    // the discovery role `up` made there, from the config its user data
    // writes; and its secret gives it a certificate and an epoch key KMS
    // decrypts under the mesh's context.
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let config_path = etc.join("meshgate.toml");
    std::fs::write(&config_path, appliance_config(&first, "eu-west-1a", &etc)).unwrap();
    let config =
        meshgate::config::Config::load(&config_path).expect("the user data's config loads");
    let discovery = config
        .signal
        .as_ref()
        .and_then(|s| s.discovery.clone())
        .expect("tag discovery in the config");
    assert!(
        discovery.roles.iter().any(|r| r.contains(OTHER_ACCOUNT)),
        "{:?}",
        discovery.roles
    );
    // SAFETY: set before the SDK reads them, in this test's one thread.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    }
    let seeds = rt.block_on(async {
        use meshgate::signal::discovery::Discovery;
        meshgate::cloud::discovery::Ec2Tags::new(discovery, "eu-west-1a", vec![], 4433)
            .discover()
            .await
            .expect("discovery")
    });
    let mut found: Vec<String> = seeds.iter().map(|(id, _)| id.clone()).collect();
    found.sort();
    assert_eq!(
        found,
        [
            "ap-southeast-2a",
            "ap-southeast-2b",
            "eu-west-1b",
            "us-east-1a",
            "us-east-1b"
        ],
        "{seeds:?}"
    );

    let (ok, _, err) = meshgate(&[
        "bootstrap",
        "--secret",
        "meshgate/corp/eu-west-1a",
        "--region",
        "eu-west-1",
        "--dir",
        etc.to_str().unwrap(),
        "--endpoint-url",
        &proxy.url,
    ]);
    assert!(ok, "bootstrap: {err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(etc.join("appliance.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "the key's mode");
    let (ok, out, err) = meshgate(&["check", "--config", config_path.to_str().unwrap()]);
    assert!(ok, "check of the appliance's config: {out}{err}");
    let wrapped = std::fs::read_to_string(etc.join("epoch-1.kms")).unwrap();
    let ciphertext =
        meshgate::keys::wrapped::from_hex(wrapped.trim()).expect("the wrapped key is hex");
    let plaintext = rt.block_on(async {
        let kms = meshgate_aws::Kms::connect(&settings(&direct, "eu-west-1", None)).await;
        kms.decrypt(
            &regions[0].key_arn,
            &ciphertext,
            &meshgate::keys::kms::encryption_context("corp", 1),
        )
        .await
        .expect("KMS decrypts the epoch key under the mesh's context")
    });
    assert_eq!(plaintext.len(), 32);

    // `down` removes all of it: the next plan is the first again, and no
    // appliance is left to discover.
    let down = fleet_json("down", &fleet);
    assert_eq!(down["actions"].as_array().unwrap().len(), all);
    assert_eq!(
        tally(&fleet_json("plan", &fleet)),
        want,
        "down left something behind"
    );
    let seeds = rt.block_on(async {
        use meshgate::signal::discovery::Discovery;
        let discovery = config
            .signal
            .as_ref()
            .and_then(|s| s.discovery.clone())
            .unwrap();
        meshgate::cloud::discovery::Ec2Tags::new(discovery, "eu-west-1a", vec![], 4433)
            .discover()
            .await
            .expect("discovery")
    });
    assert!(seeds.is_empty(), "instances left after down: {seeds:?}");

    // An `up` interrupted half-way (here at the launch templates) is
    // completed by the next, which makes only what is missing.
    proxy.always("CreateLaunchTemplate", Some(Fault::Forbidden));
    let (ok, _, err) = meshgate(&["up", "--fleet", fleet.to_str().unwrap()]);
    assert!(!ok && err.contains("CreateLaunchTemplate"), "{err}");
    proxy.always("CreateLaunchTemplate", None);
    let rest = fleet_json("up", &fleet);
    let made = rest["actions"].as_array().unwrap().len();
    assert!(made > 0 && made < all, "the next up made {made} of {all}");
    assert!(
        tally(&rest).keys().all(|k| k.starts_with("create")),
        "{rest}"
    );
    let (ok, text, _) = meshgate(&["plan", "--fleet", fleet.to_str().unwrap()]);
    assert!(ok && text.contains("nothing to do"), "{text}");
    assert_eq!(
        fleet_json("down", &fleet)["actions"]
            .as_array()
            .unwrap()
            .len(),
        all
    );
    assert_eq!(
        tally(&fleet_json("plan", &fleet)),
        want,
        "down left something behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fleet file whose ids the cloud does not hold, or holds elsewhere, is
/// refused by `plan` before anything is made, naming the API, the id and
/// what is wrong.
#[test]
fn a_subnet_that_is_missing_or_elsewhere_is_named_before_anything_is_made() {
    let moto = common::moto();
    let url = format!("http://{}", moto.addr);
    let dir = std::env::temp_dir().join(format!("meshgate-fleet-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let regions = rt.block_on(async {
        vec![
            make_region(&url, "eu-west-1", 1, None).await,
            make_region(&url, "us-east-1", 2, None).await,
        ]
    });
    let (ok, _, err) = meshgate(&["ca", "init", "--dir", dir.join("ca").to_str().unwrap()]);
    assert!(ok, "{err}");
    let fleet = dir.join("fleet.toml");
    let good = fleet_file(&url, &regions);
    let plan = || meshgate(&["plan", "--fleet", fleet.to_str().unwrap()]);

    // Zone b's subnet given for zone a: in the right VPC, the wrong zone.
    let (a, b) = (&regions[0].subnets[0], &regions[0].subnets[1]);
    std::fs::write(
        &fleet,
        good.replacen(a, "SWAP", 1)
            .replacen(b, a, 1)
            .replacen("SWAP", b, 1),
    )
    .unwrap();
    let (ok, _, err) = plan();
    assert!(!ok);
    assert!(
        err.contains("DescribeSubnets")
            && err.contains(b.as_str())
            && err.contains("in eu-west-1a of"),
        "{err}"
    );

    // Another region's subnet, and one that does not exist.
    for other in [regions[1].subnets[0].as_str(), "subnet-0123456789abcdef0"] {
        std::fs::write(&fleet, good.replacen(a, other, 1)).unwrap();
        let (ok, _, err) = plan();
        assert!(!ok);
        assert!(
            err.contains("DescribeSubnets") && err.contains(other),
            "{err}"
        );
    }

    // A secret of that name that is not a meshgate appliance's bundle:
    // bootstrap names it and writes nothing.
    rt.block_on(async {
        meshgate_aws::FleetClients::connect(&settings(&url, "eu-west-1", None))
            .await
            .create_secret(
                "meshgate/corp/eu-west-1a",
                &regions[0].key_arn,
                "{\"user\": \"db\"}",
                &[],
            )
            .await
            .expect("a foreign secret in moto");
    });
    let etc = dir.join("etc");
    let (ok, _, err) = meshgate(&[
        "bootstrap",
        "--secret",
        "meshgate/corp/eu-west-1a",
        "--region",
        "eu-west-1",
        "--dir",
        etc.to_str().unwrap(),
        "--endpoint-url",
        &url,
    ]);
    assert!(
        !ok && err.contains("secret meshgate/corp/eu-west-1a is not a meshgate appliance's"),
        "{err}"
    );
    assert!(!etc.join("appliance.key").exists(), "nothing written");
    let _ = std::fs::remove_dir_all(&dir);
}
