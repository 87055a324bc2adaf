#!/bin/bash
# Boots the "other Linux" (a stand-in for a Debian cloud VM), logs in as the
# non-root user with the test key and gains root through sudo; root itself
# has no key. The tools nixos-anywhere's fact gathering checks are there.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"

vm_start other --image other
vm_wait_ssh other debian

[[ $(vm_ssh other debian '. /etc/os-release && echo "$ID $VERSION_ID"') == "debian 12" ]] ||
	fail "os-release does not say Debian 12"
[[ $(vm_ssh other debian id -un) == debian ]] || fail "not logged in as debian"
[[ $(vm_ssh other debian sudo -n id -u) == 0 ]] || fail "sudo did not give root"
if vm_ssh other root true 2> /dev/null; then
	fail "root logged in with the user's key"
fi
vm_ssh other debian 'command -v tar && command -v gzip && command -v cpio &&
	setsid --wait true' > /dev/null || fail "tar, gzip, cpio or setsid --wait missing"
