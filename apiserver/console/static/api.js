// The console's only way to the server: same-origin calls to the public REST API (/v1/...).
// The key lives in this tab's sessionStorage and travels only in the X-API-Key header:
// never in a URL, never logged.

const KEY = "spatialforge.apiKey";

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An answer other than 2xx: the API's documented error body, reduced to one line. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function failure(response) {
  let code = "error";
  let message = `the server answered ${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not the documented JSON error body: keep the status line
  }
  return new ApiError(response.status, code, message);
}

/** fetch() against the API with the stored key (or `withKey`) and any extra `headers`; throws ApiError on non-2xx. */
export async function call(path, { method = "GET", body, accept = "application/json", withKey, headers: extra = {} } = {}) {
  const apiKey = withKey ?? key.get();
  const headers = { ...extra, Accept: accept };
  if (apiKey) headers["X-API-Key"] = apiKey;
  let response;
  try {
    response = await fetch(path, { method, body, headers, credentials: "omit", cache: "no-store" });
  } catch {
    throw new ApiError(0, "network", "the API could not be reached; check your connection and retry");
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export async function json(path, options) {
  return (await call(path, options)).json();
}
