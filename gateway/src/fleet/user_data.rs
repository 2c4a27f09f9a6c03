//! An appliance's user data: a shell script that installs the package
//! (checked against its SHA-256), writes the appliance's config, fetches
//! its certificate and key from its secret with the instance's own role
//! (`meshgate bootstrap`), and starts the unit. It holds no secret: the
//! config names files, and the secret is readable by that appliance's
//! role alone.

use std::fmt::Write;

use super::file::{Fleet, FleetRegion, FleetZone};
use super::model::secret_name;

/// Replaced on the instance by its private IPv4 address (from the
/// instance metadata service).
pub const ADDRESS: &str = "@ADDRESS@";
/// Replaced by the id of its network interface.
pub const INTERFACE: &str = "@INTERFACE@";
/// Where the package's unit reads its config, and the files beside it.
pub const CONFIG_DIR: &str = "/etc/meshgate";
/// The epoch-1 KMS data key (ciphertext) `bootstrap` writes.
pub const WRAPPED_KEY_FILE: &str = "epoch-1.kms";

fn quoted(s: &str) -> String {
    // TOML basic strings: the values here come from a validated fleet file
    // (labels, ids, ARNs, URLs): no quote or backslash reaches this.
    format!("\"{s}\"")
}

fn list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", q.join(", "))
}

/// The appliance's config, with `@ADDRESS@` and `@INTERFACE@` left for the
/// instance to fill in.
pub fn config(
    fleet: &Fleet,
    region: &FleetRegion,
    zone: &FleetZone,
    discovery_roles: &[String],
) -> String {
    let mut c = String::new();
    let prefixes: Vec<String> = region.prefixes.iter().map(ToString::to_string).collect();
    let regions: Vec<String> = fleet.regions.iter().map(|r| r.name.clone()).collect();
    let kms_region = fleet.kms_key.split(':').nth(3).unwrap_or_default();
    let endpoint = fleet
        .endpoint_url
        .as_ref()
        .map(|u| format!("endpoint_url = {}\n", quoted(u)))
        .unwrap_or_default();
    let _ = write!(
        c,
        "# meshgate appliance {id} of fleet {mesh} (written by meshgate up)\n\
         [gateway]\n\
         id = {idq}\n\
         listen = \"0.0.0.0:4500\"\n\
         advertise = \"{ADDRESS}:4500\"\n\
         admin = \"127.0.0.1:9100\"\n\
         control = \"/run/meshgate/control.sock\"\n\
         state_dir = \"/var/lib/meshgate\"\n\
         region = {region}\n\
         zone = {idq}\n\
         role = \"edge\"\n\
         group = {region}\n\
         prefixes = {prefixes}\n\
         \n\
         [tun]\n\
         name = \"mg0\"\n\
         mtu = 1400\n\
         \n\
         [policy]\n\
         module = {policy}\n\
         \n\
         [signal]\n\
         listen = \"{ADDRESS}:{port}\"\n\
         ca = \"{CONFIG_DIR}/ca.pem\"\n\
         cert = \"{CONFIG_DIR}/appliance.pem\"\n\
         key = \"{CONFIG_DIR}/appliance.key\"\n\
         \n\
         [signal.discovery]\n\
         mesh = {meshq}\n\
         regions = {regions}\n\
         roles = {roles}\n\
         {endpoint}\
         \n\
         [keys]\n\
         provider = \"kms\"\n\
         kms_key = {kms}\n\
         mesh = {meshq}\n\
         wrapped_key = \"{CONFIG_DIR}/{WRAPPED_KEY_FILE}\"\n\
         region = {kms_region}\n\
         {endpoint}\
         \n\
         [cloud]\n\
         backend = \"aws\"\n\
         region = {region}\n\
         interface = \"{INTERFACE}\"\n\
         mesh = {meshq}\n\
         {endpoint}",
        id = zone.zone,
        mesh = fleet.mesh,
        idq = quoted(&zone.zone),
        region = quoted(&region.name),
        prefixes = list(&prefixes),
        policy = quoted(&fleet.policy),
        port = fleet.signal_port,
        meshq = quoted(&fleet.mesh),
        regions = list(&regions),
        roles = list(discovery_roles),
        kms = quoted(&fleet.kms_key),
        kms_region = quoted(kms_region),
    );
    c
}

/// The whole script.
pub fn script(
    fleet: &Fleet,
    region: &FleetRegion,
    zone: &FleetZone,
    discovery_roles: &[String],
) -> String {
    let endpoint = fleet
        .endpoint_url
        .as_ref()
        .map(|u| format!(" --endpoint-url '{u}'"))
        .unwrap_or_default();
    format!(
        "#!/bin/bash\n\
         # meshgate appliance {id} of fleet {mesh}, written by `meshgate up`.\n\
         # No secret here: the certificate and key come from the secret\n\
         # {secret}, readable by this appliance's role alone.\n\
         set -euo pipefail\n\
         umask 027\n\
         token=$(curl -fsS --retry 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token)\n\
         imds() {{ curl -fsS --retry 5 -H \"X-aws-ec2-metadata-token: $token\" \"http://169.254.169.254/latest/meta-data/$1\"; }}\n\
         mac=$(imds mac)\n\
         interface=$(imds \"network/interfaces/macs/$mac/interface-id\")\n\
         address=$(imds local-ipv4)\n\
         curl -fsSL --retry 5 -o /root/meshgate.deb '{url}'\n\
         echo '{sha}  /root/meshgate.deb' | sha256sum -c -\n\
         export DEBIAN_FRONTEND=noninteractive\n\
         apt-get -o DPkg::Lock::Timeout=600 update -q\n\
         apt-get -o DPkg::Lock::Timeout=600 install -y -q /root/meshgate.deb\n\
         install -d -m 0750 -o root -g meshgate {CONFIG_DIR}\n\
         cat > {CONFIG_DIR}/meshgate.toml.in <<'MESHGATE_CONFIG'\n\
         {config}\
         MESHGATE_CONFIG\n\
         sed -e \"s/{ADDRESS}/$address/g\" -e \"s/{INTERFACE}/$interface/g\" {CONFIG_DIR}/meshgate.toml.in > {CONFIG_DIR}/meshgate.toml\n\
         # The role's credentials, IAM's propagation or the secret (made by\n\
         # `meshgate up` after a CloudFormation stack) may lag the boot.\n\
         tries=0\n\
         until meshgate bootstrap --secret '{secret}' --region '{region}' --dir {CONFIG_DIR}{endpoint}; do\n\
         \x20 tries=$((tries + 1)); [ \"$tries\" -lt 90 ] || exit 1; sleep 10\n\
         done\n\
         chgrp meshgate {CONFIG_DIR}/*\n\
         systemctl enable --now meshgate\n",
        id = zone.zone,
        mesh = fleet.mesh,
        secret = secret_name(fleet, zone),
        url = fleet.package_url,
        sha = fleet.package_sha256,
        config = config(fleet, region, zone, discovery_roles),
        region = region.name,
    )
}
