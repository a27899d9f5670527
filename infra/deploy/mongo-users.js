// Run once by the mongo image on a fresh volume (docker-entrypoint-initdb.d), as root: the least-privileged
// users of cdcflow's processes (README "Local credentials and roles" has the same split).
const services = ["product_service", "order_service", "clickstream_service"];
const admin = db.getSiblingDB("admin");
admin.createRole({
  role: "cdcflowTailer",
  privileges: [
    ...services.map((d) => ({
      resource: {db: d, collection: ""},
      actions: ["find", "changeStream", "killCursors", "listCollections", "listIndexes"],
    })),
    // Retention's pruning is the only write the tailer makes to a source.
    ...services.map((d) => ({resource: {db: d, collection: "outbox"}, actions: ["remove"]})),
  ],
  roles: [],
});
admin.createUser({
  user: "cdcflow_tailer",
  pwd: process.env.MONGO_TAILER_PASSWORD,
  roles: [{role: "cdcflowTailer", db: "admin"}, {role: "readWrite", db: "cdcflow_tailer"}],
});
for (const [user, database] of [["product", "product_service"], ["order", "order_service"],
                                ["clickstream", "clickstream_service"]]) {
  admin.createUser({user, pwd: process.env.MONGO_SERVICE_PASSWORD, roles: [{role: "readWrite", db: database}]});
}
