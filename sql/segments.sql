-- Segments from RFM and first purchase, first rule that holds wins:
--   prospect     never bought
--   new          first purchase in the last 90 days
--   champion     R >= 4 and F >= 4
--   loyal        R >= 3 and F >= 3
--   at_risk      R <= 2 and F >= 3 (bought often, not lately)
--   hibernating  R <= 2
--   promising    everyone else (recent, not yet frequent)
SELECT c.customer_id,
       CASE
           WHEN r.customer_id IS NULL THEN 'prospect'
           WHEN r.first_purchase_at >= TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day' - INTERVAL '90 days' THEN 'new'
           WHEN r.r_score >= 4 AND r.f_score >= 4 THEN 'champion'
           WHEN r.r_score >= 3 AND r.f_score >= 3 THEN 'loyal'
           WHEN r.r_score <= 2 AND r.f_score >= 3 THEN 'at_risk'
           WHEN r.r_score <= 2 THEN 'hibernating'
           ELSE 'promising'
       END AS segment
FROM customers c
LEFT JOIN rfm r ON r.customer_id = c.customer_id
