"""Ward supply: requisitions from the drug rooms, review, picking and delivery to the wards
(docs/ward-supply.md)."""
