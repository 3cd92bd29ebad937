//! `type: service`: the live Service selects the active color, the preview
//! Service the preview color. Confirmed as soon as the apiserver accepted
//! both: kube-proxy picks the change up on its own, and connections opened
//! before it stay on the old pods until the scale-down ends them.

use teal_core::release::Routing;

use super::{Ack, Target};
use crate::objects;
use crate::reconcile::Error;

pub async fn route(t: &Target<'_>, routing: Routing) -> Result<Ack, Error> {
    let live = objects::service(
        t.bg,
        t.service(),
        routing.active,
        t.ports.of(routing.active).to_vec(),
    );
    let preview_color = routing.preview.unwrap_or(routing.active);
    let preview = objects::service(
        t.bg,
        objects::preview_service_name(t.bg),
        preview_color,
        t.ports.of(preview_color).to_vec(),
    );
    t.apply_service(&preview).await?;
    t.apply_service(&live).await?;
    Ok(Ack::Confirmed)
}
