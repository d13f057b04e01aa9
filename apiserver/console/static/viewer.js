// A Succeeded ReconstructionJob's 3D view and floor plan, from its files' signed URLs only.
// The manifest says which outputs exist: the web mesh (decimated) when present, else the mesh,
// else the point cloud; the trajectory's camera centres are drawn as a line through it. The
// floor plan SVG is shown as an <img> (never parsed into this page), with the manifest's areas.
// three.js is imported on first use (a 0.7 MB module), so the job view itself stays light.

const THREE_DIR = "./vendor/three-0.170.0/";
const OPEN = "viewer-open";
const FIRST_FRAME = "viewer-first-frame";

/** Fetch a signed URL from the object store: no key, no cookie, no referrer. */
async function fetchSigned(file, what) {
  let response;
  try {
    response = await fetch(file.url, { credentials: "omit", referrerPolicy: "no-referrer", cache: "no-store" });
  } catch {
    throw new Error(`the ${what} (${file.key}) could not be fetched from the object store`);
  }
  if (!response.ok) {
    throw new Error(`the ${what} (${file.key}) answered ${response.status}: its link may have expired; reload the job`);
  }
  return response;
}

const basename = (uri) => uri.split("/").pop();

/** The job's files as the manifest names them: {manifest, geometry, trajectory, plan, kind}. */
export async function locate(files) {
  const manifestFile = files.find((f) => /(^|\/)manifest\.json$/.test(f.key));
  if (!manifestFile) return null;
  const manifest = await (await fetchSigned(manifestFile, "manifest")).json();
  const outputs = manifest.outputs || {};
  const shard = manifestFile.key.slice(0, manifestFile.key.length - "manifest.json".length);
  const byUri = (entry) => (entry && entry.uri ? files.find((f) => f.key === shard + basename(entry.uri)) : undefined);
  const geometryKind = ["webMesh", "mesh", "pointcloud"].find((name) => byUri(outputs[name]));
  const svg = outputs.floorplan && outputs.floorplan.files ? byUri(outputs.floorplan.files.svg) : undefined;
  return {
    manifest,
    geometry: geometryKind ? byUri(outputs[geometryKind]) : undefined,
    kind: geometryKind,
    trajectory: byUri(outputs.trajectory),
    plan: svg,
  };
}

/** Camera centres (world frame) of the posed frames in a trajectory.json. */
export function cameraPath(trajectory) {
  return (trajectory.frames || [])
    .map((f) => f.cameraToWorld)
    .filter((T) => Array.isArray(T) && T.length >= 3)
    .map((T) => [T[0][3], T[1][3], T[2][3]]);
}

/** The floor-plan summary: rooms with areas and the total, from the manifest (the runner's figures). */
export function planSummary(manifest) {
  const plan = manifest.floorplan || {};
  const rooms = (plan.rooms || []).map((r, i) => ({ name: r.name || `Room ${i + 1}`, area: Number(r.areaM2) }));
  const total = plan.areaM2 ?? manifest.outputs?.floorplan?.areaM2;
  return { rooms, total: total == null ? null : Number(total) };
}

/**
 * Draw `geometryFile` (PLY) and the camera path on `canvas`; resolves once the first frame is
 * drawn. Returns {reset(), dispose(), vertices, triangles}. The performance marks
 * viewer-open (the caller's click) and viewer-first-frame bound the measure "viewer-open".
 */
export async function show3d(canvas, geometryFile, trajectoryFile) {
  const [THREE, { PLYLoader }, { OrbitControls }] = await Promise.all([
    import(`${THREE_DIR}three.module.min.js`), import(`${THREE_DIR}PLYLoader.js`), import(`${THREE_DIR}OrbitControls.js`)]);
  const [plyBytes, trajectory] = await Promise.all([
    fetchSigned(geometryFile, "3D model").then((r) => r.arrayBuffer()),
    trajectoryFile ? fetchSigned(trajectoryFile, "trajectory").then((r) => r.json()) : null]);
  let geometry;
  try {
    geometry = new PLYLoader().parse(plyBytes);
  } catch (err) {
    throw new Error(`${geometryFile.key} is not a readable PLY file (${err.message})`);
  }
  const vertices = geometry.getAttribute("position")?.count || 0;
  if (!vertices) throw new Error(`${geometryFile.key} holds no vertices`);
  const colours = Boolean(geometry.getAttribute("color"));
  const triangles = geometry.index ? geometry.index.count / 3 : 0;

  const renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0xf2f2f2);
  // The runner's frame is OpenCV's (y down, z forward): turned half a turn about x, up is up.
  const world = new THREE.Group();
  world.rotation.x = Math.PI;
  scene.add(world);
  if (triangles) {
    // Front faces only: the fused surfaces face the cameras inside, so from outside the near
    // walls and the ceiling drop away and the room is seen as a doll's house.
    world.add(new THREE.Mesh(geometry, new THREE.MeshBasicMaterial({ vertexColors: colours, color: colours ? 0xffffff : 0x8899aa, side: THREE.FrontSide })));
  } else {
    world.add(new THREE.Points(geometry, new THREE.PointsMaterial({ vertexColors: colours, size: 2, sizeAttenuation: false })));
  }
  const path = trajectory ? cameraPath(trajectory) : [];
  if (path.length >= 2) {
    const line = new THREE.BufferGeometry().setFromPoints(path.map(([x, y, z]) => new THREE.Vector3(x, y, z)));
    world.add(new THREE.Line(line, new THREE.LineBasicMaterial({ color: 0xd81b60 })));
  }

  const box = new THREE.Box3().setFromObject(world);
  const sphere = box.getBoundingSphere(new THREE.Sphere());
  const camera = new THREE.PerspectiveCamera(50, 1, Math.max(sphere.radius / 1000, 0.001), sphere.radius * 20);
  camera.position.copy(sphere.center).add(new THREE.Vector3(0.6, 0.9, 1.2).normalize().multiplyScalar(sphere.radius * 2.2));
  const controls = new OrbitControls(camera, canvas);
  controls.target.copy(sphere.center);
  controls.update();
  controls.saveState();

  const draw = () => renderer.render(scene, camera);
  const resize = () => {
    const width = canvas.clientWidth || 640;
    const height = canvas.clientHeight || 400;
    renderer.setSize(width, height, false);
    camera.aspect = width / height;
    camera.updateProjectionMatrix();
    draw();
  };
  controls.addEventListener("change", draw);
  const observer = new ResizeObserver(resize);
  observer.observe(canvas);
  resize();
  performance.mark(FIRST_FRAME);
  try {
    performance.measure(OPEN, OPEN, FIRST_FRAME);
  } catch {
    // no open mark (called without the click): nothing to measure
  }
  return {
    vertices, triangles, path: path.length, colours,
    reset: () => { controls.reset(); draw(); },
    dispose: () => { observer.disconnect(); controls.dispose(); geometry.dispose(); renderer.dispose(); },
  };
}

export const marks = { OPEN, FIRST_FRAME };
