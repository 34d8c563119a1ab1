//! The Azure Resource Manager route-table service.
