// Least privilege: root hands edu to nobody with `vfio bind --user nobody`, and nobody then runs
// the edu example (examples/edu.ts) on each backend; another user is refused with EACCES, the node
// and the fix. Every node's owner and mode is put back afterwards, whatever happens.
//
// `--user` chowns the device's own nodes (group node, cdev) and leaves /dev/iommu to root: the
// kernel makes it 0660 because every device shares it. So for iommufd the test grants /dev/iommu
// through its group, as an administrator would, after checking that without it the library's error
// names /dev/iommu and the legacy fallback.
import { test } from "node:test";
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { chownAll, deviceNodes, NO_SETPRIV, NOBODY, runScript, saveOwners, STRANGER } from "./_children.ts";
import { backends, CONFIG, EDU, HAS_IOMMU } from "./_fixture.ts";

const SLOW = { timeout: 240_000 };
const AVAILABLE = backends().map((b) => b.name);

for (const mode of ["legacy", "iommufd"] as const) {
  const skip = !HAS_IOMMU
    ? "no-IOMMU groups need CAP_SYS_RAWIO: they cannot be handed to a user"
    : !AVAILABLE.includes(mode)
    ? `${CONFIG}: the kernel has no iommufd with device cdevs`
    : NO_SETPRIV;

  test(
    `privilege: ${mode}: after vfio bind --user nobody, nobody runs the edu example; another user gets EACCES naming the node and the fix`,
    { ...SLOW, skip },
    () => {
      const nodes = deviceNodes(EDU);
      const iommu = mode === "iommufd" ? ["/dev/iommu"] : [];
      const restore = saveOwners([...nodes, ...iommu]);
      try {
        const bind = runScript("cli/vfio.ts", ["bind", EDU, "--user", "nobody", "--json"]);
        assert.equal(bind.status, 0, bind.output);
        const result = JSON.parse(bind.stdout);
        assert.deepEqual([result.changed, result.driver], [false, "vfio-pci"]);
        assert.deepEqual(result.user, { name: "nobody", uid: NOBODY, gid: NOBODY, nodes }, bind.output);
        for (const node of nodes) {
          const st = statSync(node);
          assert.deepEqual([st.uid, st.gid, st.mode & 0o777], [NOBODY, NOBODY, 0o600], node);
        }
        const env = { VFIO_TS_BACKEND: mode };
        const edu = (uid: number, gid: number) =>
          runScript("examples/edu.ts", [EDU], { as: { uid, gid }, env });

        if (mode === "iommufd") {
          // /dev/iommu stays root's 0660: the library says so, and what to do.
          const denied = edu(NOBODY, NOBODY);
          assert.equal(denied.status, 1, denied.output);
          assert.match(
            denied.stderr,
            /^edu: Cannot open \/dev\/iommu \(open: EACCES\): run as root, or give your user access to \/dev\/iommu \(the kernel makes it 0660 root: grant it through its group\), or use the legacy backend: VFIO_TS_BACKEND=legacy$/m,
          );
          chownAll(iommu, statSync("/dev/iommu").uid, NOBODY); // the administrator's grant, by group
        }

        const ok = edu(NOBODY, NOBODY);
        assert.equal(ok.status, 0, ok.output);
        assert.match(
          ok.stdout,
          new RegExp(
            `ident 0x010000ed \\(version 1\\.0\\), IOMMU backend ${
              mode === "iommufd" ? "iommufd" : "type1v2"
            }`,
          ),
        );
        assert.match(ok.stdout, /DMA verified: the 2048 bytes came back unchanged/, ok.output);

        // Another user (in nobody's group, so /dev/iommu opens for iommufd): the 0600 node refuses it.
        const other = edu(STRANGER, NOBODY);
        assert.equal(other.status, 1, other.output);
        if (mode === "legacy") {
          const group = nodes[0]!;
          assert.match(
            other.stderr,
            new RegExp(
              `^edu: Cannot open ${group} \\(open: EACCES\\): no permission on ${group}: run as root, or give your user the group node \\(as root: \`vfio bind 0000:00:04\\.0 --user \\$USER\`, or a udev rule\\)$`,
              "m",
            ),
          );
        } else {
          const cdev = nodes.at(-1)!;
          assert.match(
            other.stderr,
            new RegExp(
              `^edu: Cannot open ${cdev} \\(open: EACCES\\): run as root, or give your user ${cdev}: vfio bind 0000:00:04\\.0 --user \\$USER \\(as root\\), or a udev rule$`,
              "m",
            ),
          );
        }
      } finally {
        restore();
      }
      for (const node of nodes) assert.equal(statSync(node).uid, 0, `${node} is root's again`);
    },
  );
}
