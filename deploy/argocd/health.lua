-- Argo CD health check for teal.dev/BlueGreen (resource.customizations.health.teal.dev_BlueGreen).
-- Maps status.phase to Argo CD's health: a release in progress is Progressing, a release
-- waiting at the manual gate is Suspended (as for an Argo Rollouts pause), a live color that
-- is not fully ready or a release that did not go live is Degraded.
local hs = {}

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the teal controller to report a status"
  return hs
end

local st = obj.status
if obj.metadata ~= nil and obj.metadata.generation ~= nil and st.observedGeneration ~= nil
    and st.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the teal controller to observe the latest spec"
  return hs
end

local function describe(default)
  if st.message ~= nil and st.message ~= "" and st.message ~= "live" then
    return st.phase .. ": " .. st.message
  end
  return default
end

local revision = st.activeRevision or "?"
local phase = st.phase

if phase == "Healthy" or phase == "ScaleDownDelay" then
  -- In ScaleDownDelay the new revision is live and checked; the previous color only
  -- stays up for an instant rollback.
  hs.status = "Healthy"
  hs.message = "Revision " .. revision .. " is live on " .. (st.activeColor or "?")
  return hs
end

if phase == "AwaitingPromotion" then
  hs.status = "Suspended"
  hs.message = describe("Revision " .. (st.previewRevision or "?") ..
    " is waiting for promotion (teal promote)")
  return hs
end

if phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = describe("The live color is not fully ready")
  return hs
end

if phase == "Aborted" or phase == "RolledBack" or phase == "Failed" then
  -- The workload's current revision did not go live; the previous one still serves.
  hs.status = "Degraded"
  hs.message = describe("The release of revision " .. (st.desiredRevision or "?") .. " ended " .. phase) ..
    "; revision " .. revision .. " is still live"
  return hs
end

if phase == "Initializing" or phase == "Deploying" or phase == "Previewing"
    or phase == "ScalingUp" or phase == "CuttingOver" or phase == "PostPromotion"
    or phase == "Reverting" or phase == "Superseded" then
  hs.status = "Progressing"
  hs.message = describe(phase)
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown BlueGreen phase " .. tostring(phase)
return hs
