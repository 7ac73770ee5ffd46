// A second SCIM 2.0 target for scimflow's tests: SCIMMY (npm `scimmy`) behind its Express
// routers (npm `scimmy-routers`), over an in-memory store.
//
// Everything SCIM is SCIMMY's own code: parsing and matching filters, applying PatchOp
// messages, validating resources against the User/Group schemas, ListResponse paging,
// error bodies, and the discovery endpoints. This file is only the storage SCIMMY asks an
// application for (its ingress/egress/degress handlers) plus the bearer-token check, kept
// as thin as possible so that the tests exercise SCIMMY's behaviour, not ours.
//
// Started by tests/support/scimmy_target.py:
//   SCIMMY_MODULES=<dir whose node_modules holds the pinned packages>
//   SCIMMY_TOKEN=<bearer token>   (environment, not argv: argv is visible in `ps`)
//   node server.cjs <port>        (0 picks a free port)
// It prints one line `listening <port>` on stdout once it accepts connections.
"use strict";

const crypto = require("node:crypto");
const path = require("node:path");
const { createRequire } = require("node:module");

// The packages live in a cache directory outside the repository (npm ci of the committed
// package-lock.json), not next to this file.
const modules = createRequire(path.join(process.env.SCIMMY_MODULES ?? __dirname, "package.json"));
const express = modules("express");
const SCIMMY = modules("scimmy").default;
const { SCIMMYRouters } = modules("scimmy-routers");

const token = process.env.SCIMMY_TOKEN ?? "";
delete process.env.SCIMMY_TOKEN;
if (!token) {
  console.error("SCIMMY_TOKEN is not set");
  process.exit(2);
}
const expected = Buffer.from(`Bearer ${token}`);

/** A plain, deep copy: what SCIMMY hands us are schema instances with getters. */
const plain = (value) => JSON.parse(JSON.stringify(value));

const notFound = (id) => new SCIMMY.Types.Error(404, null, `Resource ${id} not found`);

/** ingress/egress/degress handlers over one Map of id -> stored resource. */
function store(kind, unique) {
  const items = new Map();
  return {
    items,
    async ingress(resource, instance) {
      const body = plain(instance);
      const clash = unique && [...items.values()].find(
        (other) => other.id !== resource.id
          && String(other[unique]).toLowerCase() === String(body[unique]).toLowerCase());
      if (clash) {
        throw new SCIMMY.Types.Error(409, "uniqueness", `${kind} with ${unique} ${body[unique]} already exists`);
      }
      const now = new Date().toISOString();
      if (resource.id) {
        const current = items.get(resource.id);
        if (!current) throw notFound(resource.id);
        const updated = { ...body, id: resource.id, meta: { ...current.meta, lastModified: now } };
        items.set(resource.id, updated);
        return updated;
      }
      const created = { ...body, id: crypto.randomUUID(), meta: { created: now, lastModified: now } };
      items.set(created.id, created);
      return created;
    },
    async egress(resource) {
      if (resource.id) {
        const found = items.get(resource.id);
        if (!found) throw notFound(resource.id);
        return found;
      }
      // SCIMMY's Filter matches resources; its ListResponse applies startIndex/count.
      const all = [...items.values()];
      return resource.filter ? resource.filter.match(all) : all;
    },
    async degress(resource) {
      if (!items.delete(resource.id)) throw notFound(resource.id);
    },
  };
}

const users = store("User", "userName");
const groups = store("Group", null);

// The enterprise extension (department, manager, ...) as most SaaS targets declare it.
SCIMMY.Resources.declare(SCIMMY.Resources.User.extend(SCIMMY.Schemas.EnterpriseUser, false), {
  ...users,
  async degress(resource) {
    await users.degress(resource);
    // A deleted user leaves the groups it was in, as a directory would.
    for (const group of groups.items.values()) {
      group.members = (group.members ?? []).filter((m) => m.value !== resource.id);
    }
  },
});
SCIMMY.Resources.declare(SCIMMY.Resources.Group, groups);

function authenticate(request) {
  const given = Buffer.from(request.header("Authorization") ?? "");
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    throw new Error("Missing or invalid bearer token");
  }
  return "scimflow-tests";
}

const app = express();
app.use("/scim/v2", new SCIMMYRouters({ type: "bearer", handler: authenticate }));

const server = app.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
