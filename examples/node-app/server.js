"use strict";
// A small web app on node:http.
//
//   GET /          the version, as text (also in the X-App-Version header of every answer)
//   GET /healthz   200 when the app works and, if DATABASE_URL is set, its database answers; 503 otherwise
//
// PORT is a TCP port or a unix socket path; DATABASE_URL a PostgreSQL connection string (optional).

const http = require("node:http");
const { Pool } = require("pg");
const { version } = require("./package.json");

const pool = process.env.DATABASE_URL
  ? new Pool({ connectionString: process.env.DATABASE_URL, max: 4, connectionTimeoutMillis: 3000 })
  : null;
pool?.on("error", (err) => console.error(`database: ${err.message}`));

function answer(res, status, body, type = "text/plain") {
  res.writeHead(status, {
    "Content-Type": `${type}; charset=utf-8`,
    "Content-Length": Buffer.byteLength(body),
    "X-App-Version": version,
    "Cache-Control": "no-store",
  });
  res.end(body);
}

async function healthz(res) {
  const result = { status: "ok", version, database: "not configured" };
  if (pool) {
    try {
      await pool.query("SELECT 1");
      result.database = "ok";
    } catch (err) {
      Object.assign(result, { status: "unhealthy", database: `${err.name}: ${err.message}` });
      return answer(res, 503, JSON.stringify(result) + "\n", "application/json");
    }
  }
  return answer(res, 200, JSON.stringify(result) + "\n", "application/json");
}

const server = http.createServer((req, res) => {
  if (req.method !== "GET" && req.method !== "HEAD") return answer(res, 405, "GET only\n");
  const path = new URL(req.url, "http://localhost").pathname;
  if (path === "/") return answer(res, 200, `opsbook example node app ${version}\n`);
  if (path === "/healthz") {
    return healthz(res).catch((err) => answer(res, 500, `${err.message}\n`));
  }
  return answer(res, 404, "not found\n");
});
// behind a reverse proxy that keeps its connections open (nginx: 60 s), close idle ones later than it does
server.keepAliveTimeout = 65_000;

const port = process.env.PORT || 3000;
server.listen(port, () => console.log(`opsbook example node app ${version} listening on ${port}`));

// Graceful stop: no new connections, finish the requests in flight, close idle keep-alive connections, then exit.
function stop(signal) {
  console.log(`${signal}: stopping`);
  server.close(() => {
    (pool ? pool.end() : Promise.resolve()).finally(() => process.exit(0));
  });
  server.closeIdleConnections();
  setInterval(() => server.closeIdleConnections(), 100).unref();
  setTimeout(() => process.exit(1), 15_000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
