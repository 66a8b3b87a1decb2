/* The API's reference: Swagger UI over this service's own /openapi.json, nothing from elsewhere.
 *
 * "Authorize" keeps the token in this page's memory only (not persisted), and Swagger UI sends it as
 * "Authorization: Bearer" to this service: the page's Content-Security-Policy lets it talk to no other
 * origin, and no validator or other outside URL is asked.
 */
"use strict";

window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    url: new URL("../openapi.json", window.location.href).href,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    persistAuthorization: false,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
